"""The paper table specs (reports/specs/*.yaml) against the plugin registry and their reference CSVs: every
spec names its sweep, selects cells only through registered plugins and options that exist, shows the paper's
rows it cannot fill as '—' with a footnote, and derives seed 002's kept shares by hand-checkable arithmetic."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from bench import reports as rp
from bench.registry import REGISTRIES

SWEEPS = {"mcl_table1": "table1", "mcl_table2": "mcl_table2", "mcl_table3": "mcl_table3",
          "mcl_table5": "mcl_table5", "mcl_table6": "mcl_table6", "dbr_table1": "dbr_table1",
          "dbr_table2": "dbr_table2", "dbr_table3": "dbr_table3", "lfd_table2": "lfd_table2",
          **{f"ssl_table{i}": f"ssl_table{i}" for i in range(1, 8)},
          "released_nad": "released_nad", "released_abl": "released_abl", "lfd_fig2": "lfd_fig2"}
NO_REFERENCE = {"lfd_fig2"}      # a bar chart: the paper prints no numbers to compare against
# paper rows bdbench has no plugin for yet: the specs keep them (rendered '—') and say so in a note
NOT_IMPLEMENTED: set[tuple[str, str]] = set()      # (kind, plugin) a spec may name before it exists, with a note


def test_every_spec_names_its_sweep():
    assert rp.spec_names() == sorted(SWEEPS)
    for name, sweep in SWEEPS.items():
        spec = rp.load_spec(name)
        assert (spec.name, spec.sweep, spec.reference) == (name, sweep, None if name in NO_REFERENCE else name)
    assert rp.spec_for_sweep("table1").name == "mcl_table1" and rp.spec_for_sweep("ssl_table4").name == "ssl_table4"


def selections(spec):
    for g in spec.groups:
        yield f"group {g.label}", dict(g.where)
    for col, options in spec.variants.items():
        for opt in options:
            yield f"{col} variant {opt['label']}", dict(opt["where"])
    yield "filters", {k: v for k, v in spec.filters.items() if k in REGISTRIES}


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_specs_select_registered_plugins_and_existing_options(name):
    spec = rp.load_spec(name)
    for what, where in selections(spec):
        for kind in ("dataset", "attack", "defense"):
            values = where.get(kind)
            for value in values if isinstance(values, list) else [values] if values is not None else []:
                if (kind, value) in NOT_IMPLEMENTED:
                    assert spec.complete and any(value in n or "not implemented" in n
                                                 for n in spec.notes), f"{name} {what}: {value} needs a note"
                    continue
                assert value in REGISTRIES[kind], f"{name} {what}: {kind} {value!r} is not registered"
        for key, value in where.items():
            if "." not in key:
                continue
            kind, option = key.split(".", 1)
            plugin = where.get(kind)
            assert plugin is not None, f"{name} {what}: {key} without naming the {kind}"
            if (kind, plugin) in NOT_IMPLEMENTED:
                continue
            entry = REGISTRIES[kind].get(plugin)
            assert option in entry.config.__dataclass_fields__, f"{name} {what}: {plugin} has no option {option}"
            entry.parse({option: value})             # a valid value for the option (raises otherwise)


def cells(rows, **extra):
    out = []
    for i, r in enumerate(rows):
        d = {"sweep": "t", "cell": i, "scale": "mini", "profile": "mini", "dataset": "cifar10", "model": "m",
             "recipe": "r", "attack": "badnets", "defense": "none", "clean_ratio": 0.05, "seed": 0,
             "state": "done", "asr": 0.5, "ba": 0.9, "key": f"k{i}", **extra, **r}
        d["config"] = json.dumps({"attack": {"name": d["attack"], **d.pop("attack_opts", {})},
                                  "defense": {"name": d["defense"], **d.pop("defense_opts", {})}})
        out.append(d)
    return pd.DataFrame(out)


def test_a_complete_spec_shows_the_papers_unfilled_rows_as_dashes():
    table = rp.build_table(cells([{"asr": 0.9}]), rp.load_spec("ssl_table5"))
    assert [r[1] for r in table.rows] == ["3x3 patch", "7x7 patch", "11 x 11 patch"]   # badnets row dropped
    assert table.missing == 3 * 3 * 2
    html = rp.render_html(table)
    assert html.count("—<sup>†</sup>") == 18 and "surrogate encoder is trained by the attacker" in html and rp.MISSING_NOTE in html
    comp = rp.paper_vs_ours(table, rp.load_reference("ssl_table5"))
    assert len(comp) == 18 and comp["ours"].isna().all() and comp["paper"].sum() == pytest.approx(1259.83)


def test_lfd_table2_keeps_all_22_paper_rows_around_the_ones_we_have():
    frame = cells([{"defense": "lfd", "attack": "trojan", "attack_opts": {"shape": "watermark"}, "asr": 0.02}])
    table = rp.build_table(frame, rp.load_spec("lfd_table2"))
    assert len(table.rows) == 10 + 7 + 5 and table.rows[:6] == [("cifar10", a) for a in
                                                        ("BN-G", "BN-W", "Blend", "TJ-SQ", "TJ-WM", "Dynamic")]
    tj_wm = table.rows.index(("cifar10", "TJ-WM"))
    lfd = [g.label for g in table.groups].index("LfD")
    assert table.stats[(tj_wm, lfd, "asr")].mean == 0.02 and table.missing == 22 * 5 * 2 - 2
    assert "not implemented" not in rp.render_latex(table)            # Dynamic and L2 are registered now


def test_mcl_variant_groups_pick_cells_by_their_defense_options():
    rows = [{"defense": "none", "asr": 0.99}, {"defense": "nc", "asr": 0.04}]
    for source, asr in (("nc", 0.03), ("mesa", 0.02), ("true", 0.01)):
        rows.append({"defense": "mcl", "asr": asr,
                     "defense_opts": {"trigger_source": source, "loss": "nt_xent", "extra": "none",
                                      "bn_recompute": False}})
    rows.append({"defense": "mcl", "asr": 0.5, "defense_opts": {"trigger_source": "nc", "loss": "mse",
                                                                "extra": "none", "bn_recompute": False}})
    rows.append({"defense": "mcl", "asr": 0.06, "defense_opts": {"trigger_source": "nc", "loss": "nt_xent",
                                                                 "extra": "none", "bn_recompute": True}})
    frame = cells(rows)
    t2 = rp.table_frame(rp.build_table(frame, rp.load_spec("mcl_table2")))
    asr = t2[t2.metric == "asr"].set_index("group")["mean"].to_dict()
    assert asr == {"Before": 99.0, "NC": 4.0, "MCL(NC)": 3.0, "MCL(MESA)": 2.0, "MCL(True)": 1.0, "MCL(NC)+BN": 6.0}
    t3 = rp.table_frame(rp.build_table(frame, rp.load_spec("mcl_table3")))
    assert t3[t3.metric == "asr"].set_index("group")["mean"].to_dict() == {"Before": 99.0, "MCL": 3.0, "L_mse": 50.0}
    marks = t2[t2.metric == "asr"].set_index("group")["mark"].to_dict()
    assert marks["MCL(True)"] == "best" and marks["MCL(MESA)"] == "second" and marks["Before"] == ""


def test_kept_shares_are_derived_from_the_detection_counts():
    """1000 poisoned of 50,000; 1200 flagged of which 970 poisoned: 48,770 of the 49,000 clean images kept."""
    flagged = {"flag_recall": 0.97, "flag_recall_n": 1000, "flag_precision": 970 / 1200, "n_flagged": 1200,
               "n_kept": 48800, "kept_precision": 48770 / 48800}
    relabel_only = {"flag_recall": 0.0, "flag_recall_n": 1000, "flag_precision": math.nan, "n_flagged": 0,
                    "n_kept": 50000, "kept_precision": 49000 / 50000}
    frame = rp.add_derived(cells([{"defense": "ssl_cleanse", **flagged}, {"defense": "ssl_cleanse", **relabel_only},
                                  {"defense": "none"}]))
    assert frame["clean_kept"].tolist() == pytest.approx([48770 / 49000, 1.0, 1.0])
    assert frame["poison_kept"].tolist() == pytest.approx([0.03, 1.0, 1.0])   # no defense keeps everything
    # without the stored count the number of poisoned images comes from precision and recall
    old = rp.add_derived(cells([{"defense": "ssl_cleanse", **{k: v for k, v in flagged.items() if k != "flag_recall_n"}}]))
    assert old["clean_kept"].iloc[0] == pytest.approx(48770 / 49000)


def test_ssl_table3_lays_the_ablation_out_as_column_groups():
    rows = [{"defense": "none", "asr": 0.984, "ba": 0.9419}]
    for enc, filt, rel, asr in (("autoencoder", True, True, 0.037), ("simclr", True, False, 0.689),
                                ("simclr", False, True, 0.798), ("simclr", True, True, 0.042)):
        rows.append({"defense": "ssl_cleanse", "asr": asr, "flag_recall": 0.9, "flag_recall_n": 10,
                     "n_flagged": 20, "n_kept": 80, "kept_precision": 79 / 80,
                     "defense_opts": {"encoder": enc, "filter": "knn", "filtering": filt, "relabelling": rel}})
    table = rp.build_table(cells(rows), rp.load_spec("ssl_table3"))
    out = rp.table_frame(table).set_index(["group", "metric"])["text"]
    assert out[("baseline, without any step", "clean_kept")] == "100.00"
    assert out[("SimCLR + filtering", "asr")] == "68.90" and out[("SimCLR + relabeling", "asr")] == "79.80"
    assert out[("AE + filtering + relabeling", "clean_kept")] == "87.78"          # 79 of the 90 clean images
    comp = rp.paper_vs_ours(table, rp.load_reference("ssl_table3")).set_index(["group", "metric"])
    assert comp.loc[("SimCLR + filtering + relabeling", "asr"), "diff"] == pytest.approx(0.0)


def test_released_specs_put_our_change_from_before_beside_the_authors_numbers():
    """Δ = a defense's value minus the 'none' cell of the same model (a JPEG test set lowers BA before any
    defense, so the change is what compares with NAD's README)."""
    config = {"dataset": {"name": "cifar10"}, "model": {"name": "wrn16_1", "checkpoint": "x"},
              "recipe": {"name": "mcl_paper"}, "attack": {"name": "badnets", "target": 5}, "seed": 0}
    rows = []
    for i, (defense, ba, asr) in enumerate([("none", 0.80, 1.0), ("ft", 0.78, 0.20), ("nad", 0.77, 0.05)]):
        cfg = {**config, "defense": {"name": defense}, "clean_ratio": 0.05}
        rows.append({"sweep": "released_nad", "dataset": "cifar10", "model": "wrn16_1", "recipe": "mcl_paper",
                     "attack": "badnets", "defense": defense, "clean_ratio": 0.05, "seed": 0, "ba": ba, "asr": asr,
                     "key": f"k{i}", "config": json.dumps(cfg)})
    table = rp.build_table(pd.DataFrame(rows), rp.load_spec("released_nad"))
    out = rp.table_frame(table).set_index(["group", "metric"])
    assert out.loc[("FT", "ba_delta"), "mean"] == pytest.approx(-2.0)
    assert out.loc[("NAD", "asr_delta"), "mean"] == pytest.approx(-95.0)
    assert out.loc[("Before", "asr_delta"), "mean"] == pytest.approx(0.0)
    comp = rp.paper_vs_ours(table, rp.load_reference("released_nad")).set_index(["group", "metric"])
    assert comp.loc[("NAD", "asr_delta"), "paper"] == pytest.approx(-96.43)
    assert comp.loc[("NAD", "asr_delta"), "diff"] == pytest.approx(1.43)
    assert comp.loc[("FT", "ba"), "paper"] == pytest.approx(82.32)
