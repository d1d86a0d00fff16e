"""bench.reports: marks per metric direction, mean ± std with n, missing cells, escaping, paper references,
regression verdicts and figures -- on hand-made cells frames (no database, no training)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from bench import reports as rp


def cells(rows):
    """A cells frame like bench.results.cells_frame: (attack, defense, seed, asr, ba) tuples."""
    out = []
    for i, (attack, defense, seed, asr, ba) in enumerate(rows):
        out.append({"sweep": "t", "cell": i, "scale": "mini", "profile": "mini", "dataset": "cifar10",
                    "model": "m", "recipe": "r", "attack": attack, "defense": defense, "clean_ratio": 0.05,
                    "seed": seed, "state": "done", "asr": asr, "ba": ba, "key": f"k{i}",
                    "config": json.dumps({"defense": {"name": defense, "tau": 0.5}})})
    return pd.DataFrame(out)


SPEC = rp.spec_from_dict({"name": "t", "rows": ["dataset", "attack"], "groups": [
    {"label": "Before", "where": {"defense": "none"}, "rank": False},
    {"label": "A", "where": {"defense": "a"}}, {"label": "B", "where": {"defense": "b"}},
    {"label": "C", "where": {"defense": "c"}}]})


def marks(table, metric):
    return {table.groups[gi].label: m for (ri, gi, name), m in table.marks.items() if name == metric}


def test_bold_best_and_underline_second_follow_each_metrics_direction():
    frame = cells([("badnets", "none", 0, 0.95, 0.99),          # unranked 'Before' would win BA
                   ("badnets", "a", 0, 0.10, 0.50), ("badnets", "b", 0, 0.20, 0.90),
                   ("badnets", "c", 0, 0.30, 0.70)])
    table = rp.build_table(frame, SPEC)
    assert marks(table, "asr") == {"A": "best", "B": "second"}       # ASR: lower is better
    assert marks(table, "ba") == {"B": "best", "C": "second"}        # BA: higher is better
    html = rp.render_html(table)
    assert '<td class="best" title="A ASR"><span class="v"><b>10.00</b>' in html
    assert '<td class="second" title="C BA"><span class="v"><u>70.00</u>' in html
    tex = rp.render_latex(table)
    assert r"\textbf{10.00}" in tex and r"\underline{20.00}" in tex and r"\textbf{90.00}" in tex


def test_ties_as_printed_share_the_mark():
    frame = cells([("x", "a", 0, 0.100001, 0.5), ("x", "b", 0, 0.1, 0.6), ("x", "c", 0, 0.3, 0.7)])
    assert marks(rp.build_table(frame, SPEC), "asr") == {"A": "best", "B": "best", "C": "second"}


def test_mean_std_over_seeds_with_n_shown_where_it_differs():
    frame = cells([("x", "a", 0, 0.10, 0.5), ("x", "a", 1, 0.20, 0.5),
                   ("x", "b", 0, 0.40, 0.6), ("x", "b", 1, 0.40, 0.6), ("x", "c", 0, 0.3, 0.7)])
    table = rp.build_table(frame, SPEC)
    assert table.common_n == 2
    out = rp.table_frame(table).set_index(["group", "metric"])
    assert out.loc[("A", "asr"), "text"] == "15.00 ± 7.07"                # std with ddof=1 of 10 and 20
    assert out.loc[("A", "asr"), "n"] == 2
    assert out.loc[("C", "asr"), "text"] == "30.00 (n=1)"                  # one seed among twos
    assert "n = 2 per cell" in rp.render_html(table)


def test_a_table_entry_refuses_to_average_two_configurations_as_seeds():
    frame = cells([("x", "a", 0, 0.10, 0.5), ("x", "a", 0, 0.90, 0.5), ("x", "b", 0, 0.4, 0.6)])
    frame.loc[1, "config"] = json.dumps({"defense": {"name": "a", "tau": 0.1}})      # a --set variant, same seed
    with pytest.raises(rp.SpecError, match=r"row cifar10/x, column A: 2 cells differ in defense.tau, not only in the "
                                           r"seed"):
        rp.build_table(frame, SPEC)
    assert rp.build_table(frame.drop(index=1), SPEC).stats[(0, 1, "asr")].mean == pytest.approx(0.10)


def test_a_missing_cell_is_a_dash_with_a_footnote():
    frame = cells([("x", "a", 0, 0.1, 0.5), ("x", "b", 0, 0.2, 0.6), ("y", "a", 0, 0.1, 0.5)])
    table = rp.build_table(frame, SPEC)
    assert table.missing == 2 * 2 + 2 * 3        # row x: Before and C; row y: Before, B, C (ASR and BA)
    html = rp.render_html(table)
    assert html.count("—<sup>†</sup>") == table.missing and rp.MISSING_NOTE in html
    tex = rp.render_latex(table)
    assert tex.count(r"---\textsuperscript{\dag}") == table.missing and r"\dag{} --- : no finished run" in tex


def test_html_autoescapes_a_hostile_label():
    spec = rp.spec_from_dict({"name": "t", "title": "<b>x</b>",
                              "labels": {"attack": {"x": '<script>alert("pwn")</script>'}}})
    html = rp.render_html(rp.build_table(cells([("x", "a", 0, 0.1, 0.5)]), spec))
    assert "<script>" not in html and "&lt;script&gt;alert(&#34;pwn&#34;)&lt;/script&gt;" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html


def test_latex_escapes_special_characters_in_names():
    assert rp.latex_escape("50% a_b & c #1 $x$ {y} ~z ^w \\v") == \
        r"50\% a\_b \& c \#1 \$x\$ \{y\} \textasciitilde{}z \textasciicircum{}w \textbackslash{}v"
    spec = rp.spec_from_dict({"name": "t", "title": "rate 10% & co", "labels": {"attack": {"x": "BN_all2one #1"}}})
    tex = rp.render_latex(rp.build_table(cells([("x", "a", 0, 0.1, 0.5)]), spec))
    assert r"BN\_all2one \#1" in tex and r"rate 10\% \& co" in tex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"\cmidrule(lr){3-4}" in tex


EXPECTED_ROWS = {"mcl_table1": 132, "dbr_table1": 104, "dbr_table2": 181, "ssl_table1": 4,
                 "ssl_table2": 48, "lfd_table2": 220, "mcl_table2": 46, "mcl_table3": 30,
                 "mcl_table5": 60, "mcl_table6": 60, "dbr_table3": 42, "ssl_table3": 20, "ssl_table4": 18,
                 "ssl_table5": 18, "ssl_table6": 4, "ssl_table7": 8}


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_reference_csvs_parse_and_match_their_spec(name):
    ref = rp.load_reference(name)
    assert len(ref) == EXPECTED_ROWS[name]
    assert list(ref.columns) == ["paper", "table", "dataset", "attack", "defense", "metric", "value", "note"]
    assert not ref.duplicated(["dataset", "attack", "defense", "metric"]).any()
    spec = rp.load_spec(name)
    assert spec.reference == name
    groups = {g.label for g in spec.groups}
    assert set(ref["defense"]) <= groups                                # paper-vs-ours joins on these labels
    for extra in groups - set(ref["defense"]):                         # a group the paper lacks says so
        assert any(extra in note for note in spec.notes), f"{name}: group {extra} is not in the paper: add a note"
    assert set(ref["metric"]) == {m.name for m in spec.metrics}


@pytest.mark.parametrize("name, key, value", [
    ("mcl_table1", ("Cifar-10", "Sig", "Before", "asr"), 99.03),
    ("mcl_table1", ("ImageNet", "Trojan", "NC", "ba"), 74.32),
    ("mcl_table1", ("GTSRB", "Blend", "I-BAU", "asr"), 28.62),
    ("dbr_table1", ("CIFAR-10", "BN-all2all", "DBD", "asr"), 75.21),
    ("dbr_table2", ("CIFAR-10", "SIG", "ANP*", "asr"), 76.32),
    ("dbr_table2", ("CIFAR-100", "Blend-Kitty", "MCR*", "asr"), 20.60),
    ("lfd_table2", ("GTSRB", "TJ-SQ", "LfD", "asr"), 25.70),
    ("lfd_table2", ("ImageNet subset", "None", "LfD", "ba"), 94.69),
    ("ssl_table1", ("CIFAR-10", "BadNet", "kNN", "poison_kept"), 3.2),
    ("ssl_table2", ("CIFAR-10", "WaNet", "AC[13]", "ba"), 87.05),
])
def test_reference_values_spot_checked_against_the_paper_text(name, key, value):
    ref = rp.load_reference(name).set_index(["dataset", "attack", "defense", "metric"])["value"]
    assert ref[key] == value


@pytest.mark.parametrize("name", ["dbr_table1", "dbr_table2"])
def test_the_papers_avg_rows_agree_with_the_transcribed_rows(name):
    ref = rp.load_reference(name)
    for (_ds, _g, _m), part in ref.groupby(["dataset", "defense", "metric"]):
        avg, rest = part[part.attack == "Avg"]["value"], part[part.attack != "Avg"]["value"]
        if len(avg):
            assert abs(avg.iloc[0] - rest.mean()) <= 0.02


def test_paper_vs_ours_matches_through_display_labels():
    frame = cells([("badnets", "mcl", 0, 0.03, 0.80), ("badnets", "none", 0, 0.99, 0.83)])
    table = rp.build_table(frame, rp.load_spec("mcl_table1"))
    comp = rp.paper_vs_ours(table, rp.load_reference("mcl_table1")).set_index(["group", "metric"])
    assert comp.loc[("MCL", "asr"), "paper"] == 2.22
    assert comp.loc[("MCL", "asr"), "diff"] == pytest.approx(3.0 - 2.22)
    assert pd.isna(comp.loc[("FT", "asr"), "ours"])                  # the paper has it, we do not
    assert len(comp) == 12                                             # one row (Cifar-10 BadNets) x 6 x 2


def test_variants_split_one_attack_into_the_papers_rows():
    frame = cells([("badnets", "dbr", 0, 0.01, 0.9), ("badnets", "dbr", 0, 0.02, 0.8)])
    frame["config"] = [json.dumps({"attack": {"label_mode": m}}) for m in ("all2one", "all2all")]
    table = rp.build_table(frame, rp.load_spec("dbr_table2"))
    assert [r[1] for r in table.rows] == ["BN-all2one", "BN-all2all"]


def test_verdicts_follow_the_direction_and_tolerance():
    base = pd.DataFrame([
        {"key": "k0", "metric": "asr", "value": 0.10, "tolerance": 0.03},   # ours 0.20: worse -> fail
        {"key": "k1", "metric": "asr", "value": 0.30, "tolerance": 0.03},   # ours 0.10: better -> warn
        {"key": "k2", "metric": "ba", "value": 0.905, "tolerance": 0.01},   # ours 0.90: noise -> pass
        {"key": "k3", "metric": "ba", "value": 0.90, "tolerance": 0.01},    # no such cell -> insufficient
        {"key": "k2", "metric": "ra", "value": 0.5, "tolerance": 0.03}])    # cell has no RA -> insufficient
    frame = cells([("x", "a", 0, 0.20, 0.5), ("x", "a", 1, 0.10, 0.5), ("x", "a", 2, 0.1, 0.90)])
    result = rp.compare(frame, base)
    assert result["verdict"].tolist() == ["fail", "warn", "pass", "insufficient", "insufficient"]
    per_cell = rp.cell_verdicts(result).set_index("key")["verdict"].to_dict()
    assert per_cell == {"k0": "fail", "k1": "warn", "k2": "insufficient", "k3": "insufficient"}


def test_a_moved_key_is_matched_by_the_cell_labels_and_never_silently_passed():
    frame = cells([("x", "a", 0, 0.10, 0.5), ("x", "a", 1, 0.20, 0.5)])
    base = rp.baseline_values(frame, metrics=("asr",))
    base["key"] = ["old0", "old1"]
    base.loc[1, ["value", "tolerance"]] = [0.10, 0.03]             # seed 1 was at 10 % ASR: now worse
    assert rp.compare(frame, base)["verdict"].tolist() == ["pass", "fail"]
    base["seed"] = [5, 6]                                            # no key and no labels match
    assert rp.compare(frame, base)["verdict"].tolist() == ["insufficient", "insufficient"]


def test_baseline_tolerance_is_widened_by_the_seed_spread():
    frame = cells([("x", "a", 0, 0.10, 0.50), ("x", "a", 1, 0.20, 0.50), ("x", "b", 0, 0.1, 0.5)])
    values = rp.baseline_values(frame, metrics=("asr", "ba")).set_index(["key", "metric"])["tolerance"]
    assert values[("k0", "asr")] == pytest.approx(2 * 0.0707107, abs=1e-5)   # 2 x std(0.1, 0.2)
    assert values[("k0", "ba")] == 0.01 and values[("k2", "asr")] == 0.03    # defaults: BA 1, ASR 3 points


def test_ablation_figure_writes_identical_png_and_pdf_twice(tmp_path):
    frame = cells([("x", d, s, a, 0.9) for d in ("a", "b") for s in (0, 1) for a in (0.1, 0.2)])
    frame["clean_ratio"] = [0.01, 0.05] * 4
    first = rp.ablation_figure(frame, "clean_ratio", "asr", tmp_path / "one")
    second = rp.ablation_figure(frame, "clean_ratio", "asr", tmp_path / "two")
    assert [p.suffix for p in first] == [".png", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in first)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    rp.ablation_figure(frame, "defense.tau", "asr", tmp_path / "tau")           # a config path as x
    with pytest.raises(rp.SpecError, match="y=nope"):
        rp.ablation_figure(frame, "clean_ratio", "nope", tmp_path / "bad")


def test_method_colours_are_fixed():
    assert rp.method_color("mcl") == rp.method_color("mcl") != rp.method_color("ft")
    assert rp.method_color("some_new_method") == rp.method_color("some_new_method")


def test_unknown_spec_key_names_the_closest():
    with pytest.raises(rp.SpecError, match="metrix: unknown key; did you mean 'metrics'"):
        rp.spec_from_dict({"metrix": []})


def test_tables_define_the_metrics_they_show():
    table = rp.build_table(cells([("x", "a", 0, 0.1, 0.5)]), SPEC)
    names = {m.name for m in SPEC.metrics}
    html, tex = rp.render_html(table), rp.render_latex(table)
    for name, definition in rp.METRIC_DEFINITIONS.items():
        assert (definition in html) == (name in names)
        assert (rp.latex_escape(definition) in tex) == (name in names)
    assert names & set(rp.METRIC_DEFINITIONS)


def test_a_checkpoint_cells_before_numbers_ignore_its_nominal_recipe():
    """A released model is its file: cells run by different code versions (whose recipe gained a field) still
    share the model's `none` cell; trained models with different recipes do not."""
    from bench.reports.gate import with_before

    def row(defense, recipe, asr, checkpoint=True):
        model = {"name": "wrn16_1", "checkpoint": "m.tar", "sha256": "ab"} if checkpoint else {"name": "wrn16_1"}
        cfg = {"attack": {"name": "badnets"}, "seed": 0, "model": model, "recipe": recipe, "defense": {"name": defense}}
        return {"defense": defense, "attack": "badnets", "ba": 0.8, "asr": asr, "config": json.dumps(cfg)}
    old, new = {"name": "r"}, {"name": "r", "eta_min": 0.0}
    out = with_before(pd.DataFrame([row("none", old, 1.0), row("ft", new, 0.1)]))
    assert out["gate"].tolist() == ["ok", "ok"] and out["asr_delta"].round(3).tolist() == [0.0, -0.9]
    trained = with_before(pd.DataFrame([row("none", old, 1.0, False), row("ft", new, 0.1, False)]))
    assert trained["gate"].tolist() == ["ok", "no before cell"]
    # and two runs of the same defense on the file are seeds of one configuration, not two recipes
    from bench.reports.frames import config_differences
    assert config_differences(pd.DataFrame([row("ft", old, 0.1), row("ft", new, 0.2)])) == []
    assert config_differences(pd.DataFrame([row("ft", old, 0.1, False), row("ft", new, 0.2, False)])) == \
        ["recipe.eta_min"]


def test_a_fixed_trigger_seed_is_the_seed_it_names():
    """trigger_seed None draws the trigger from the cell's seed: seeds that all leave it None are seeds of one
    configuration; beside a fixed trigger_seed, seed 0's default cell and a seed-1 cell with trigger_seed 0 poison
    with one trigger and differ only in the seed, and seed 1's own trigger is another attack."""
    from bench.reports.frames import config_differences

    def row(seed, trigger_seed):
        cfg = {"attack": {"name": "badnets", "trigger_seed": trigger_seed}, "seed": seed, "defense": {"name": "ac"}}
        return {"defense": "ac", "attack": "badnets", "asr": 0.05, "config": json.dumps(cfg)}
    assert config_differences(pd.DataFrame([row(0, None), row(1, 0)])) == []
    assert config_differences(pd.DataFrame([row(0, None), row(1, None)])) == [], "each seed its own trigger"
    assert config_differences(pd.DataFrame([row(1, 0), row(1, None)])) == ["attack.trigger_seed"]
    assert config_differences(pd.DataFrame([row(0, None), row(1, None), row(1, 0)])) == ["attack.trigger_seed"]
