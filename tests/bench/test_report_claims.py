"""The claims engine (bench.reports.claims) on hand-made cells frames: each check kind where the claim holds and
where it fails by construction, the seed-aware tolerance, the not-testable verdicts (a gated cell, a missing
cell, a paper-scale claim on a mini record), a committed record CSV, and one error per kind of claims-file typo
(in the library and through `bench check`, exit 2)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.reports import claims as cl

ROOT = Path(__file__).resolve().parents[2]


def frame(values, scale="mini"):
    """values: {(attack, defense): [(asr, ba) per seed]} -> a cells frame (labels only, like a CSV record)."""
    rows = []
    for (attack, defense), seeds in values.items():
        for seed, (asr, ba) in enumerate(seeds):
            rows.append({"sweep": "t", "scale": scale, "dataset": "cifar10", "model": "m", "recipe": "r",
                         "attack": attack, "defense": defense, "clean_ratio": 0.05, "seed": seed,
                         "asr": asr, "ba": ba, "key": f"{attack}-{defense}-{seed}"})
    return pd.DataFrame(rows)


BASE = {("badnets", "none"): [(0.99, 0.90), (0.98, 0.92)],
        ("badnets", "ft"): [(0.30, 0.85), (0.40, 0.87)],
        ("badnets", "nad"): [(0.05, 0.84), (0.07, 0.86)],
        ("badnets", "mcl"): [(0.02, 0.89), (0.03, 0.91)]}


def claim(check, **kw):
    return cl.claims_from_dict({"claims": [{"id": "c", "source": "s", "quote": "q", "check": check, **kw}]})


def verdict(check, values=BASE, scale="mini", **kw):
    return cl.evaluate(claim(check, **kw), frame(values, scale))[0]


@pytest.mark.parametrize("value, expected", [(0.05, "holds"), (0.015, "fails")])
def test_threshold(value, expected):
    v = verdict({"kind": "threshold", "metric": "asr", "subject": {"defense": "mcl"}, "op": "<", "value": value})
    assert v.verdict == expected, v.numbers      # MCL: 2.5 ± 0.71; 2.5 - 0.71 >= 1.5 fails beyond one std
    assert "2.50 ± 0.71 (n=2)" in v.numbers


def test_threshold_tolerates_seed_noise_but_not_beyond_k_std():
    noisy = {**BASE, ("badnets", "mcl"): [(0.02, 0.9), (0.08, 0.9)]}        # mean 5, std 4.24 points
    check = {"kind": "threshold", "metric": "asr", "subject": {"defense": "mcl"}, "op": "<", "value": 0.04}
    assert verdict(check, noisy).verdict == "holds"                       # 5 - 4.24 < 4: within noise
    assert verdict({**check, "k": 0}, noisy).verdict == "fails"           # strict on the mean
    assert verdict({**check, "value": 0.005}, noisy).verdict == "fails"   # beyond one std


def test_a_one_sided_t_test_over_seeds_instead_of_k_std():
    three = {**BASE, ("badnets", "mcl"): [(0.05, 0.9), (0.06, 0.9), (0.07, 0.9)]}   # mean 6, std 1 point, n 3
    check = {"kind": "threshold", "metric": "asr", "subject": {"defense": "mcl"}, "op": "<", "value": 0.04}
    assert verdict(check, three).verdict == "fails"                       # 6 - 1 >= 4: beyond one std
    # t = (6 - 4) / (1 / sqrt 3) = 3.46 with 2 degrees of freedom: one-sided p = 0.037
    assert verdict({**check, "alpha": 0.05}, three).verdict == "fails"
    assert verdict({**check, "alpha": 0.01}, three).verdict == "holds"
    assert verdict({**check, "value": 0.07, "alpha": 0.01}, three).verdict == "holds"   # the mean satisfies it


@pytest.mark.parametrize("op, expected", [(">", "holds"), ("<", "fails")])
def test_compare(op, expected):
    v = verdict({"kind": "compare", "metric": "asr", "subject": {"defense": "ft"}, "other": {"defense": "nad"},
                 "op": op})
    assert v.verdict == expected and "asr ft − nad = 29.00" in v.numbers


def test_compare_pairs_seeds_so_a_shared_model_shift_is_not_noise():
    # ft is 1 point above nad on each seed, while both move 20 points between seeds: paired, it is clear
    shifted = {**BASE, ("badnets", "ft"): [(0.11, 0.8), (0.31, 0.8)], ("badnets", "nad"): [(0.10, 0.8), (0.30, 0.8)]}
    v = verdict({"kind": "compare", "metric": "asr", "subject": {"defense": "ft"}, "other": {"defense": "nad"},
                 "op": "<", "k": 1}, shifted)
    assert v.verdict == "fails" and "1.00 ± 0.00" in v.numbers


@pytest.mark.parametrize("value, expected", [(-0.015, "holds"), (-0.005, "fails")])
def test_difference(value, expected):
    # MCL's BA drop from the backdoored model: 0.90 -> 0.89 and 0.92 -> 0.91, i.e. -1 point on both seeds
    v = verdict({"kind": "difference", "metric": "ba", "subject": {"defense": "mcl"}, "other": {"defense": "none"},
                 "op": ">=", "value": value, "k": 0})
    assert v.verdict == expected and "-1.00" in v.numbers


@pytest.mark.parametrize("subject, expected", [("mcl", "holds"), ("nad", "fails")])
def test_rank(subject, expected):
    v = verdict({"kind": "rank", "metric": "asr", "subject": {"defense": subject},
                 "among": {"defense": ["ft", "nad", "mcl"]}, "at_most": 1})
    assert v.verdict == expected
    assert ("clearly better: none" in v.numbers) == (expected == "holds")


def test_rank_within_seed_noise_is_a_tie_not_a_loss():
    close = {**BASE, ("badnets", "nad"): [(0.01, 0.8), (0.05, 0.8)]}        # nad 3 ± 2.8 vs mcl 2.5 ± 0.7
    check = {"kind": "rank", "metric": "asr", "subject": {"defense": "nad"}, "among": {"defense": ["nad", "mcl"]}}
    assert verdict(check, close).verdict == "holds"
    assert verdict({**check, "k": 0}, close).verdict == "fails"


def test_a_gated_cell_is_not_testable():
    # Sig did not take (ASR before any defense 40 % < 90 %): a claim over it cannot hold or fail
    values = {**BASE, ("sig", "none"): [(0.40, 0.9), (0.42, 0.9)], ("sig", "mcl"): [(0.01, 0.8), (0.02, 0.8)]}
    check = {"kind": "threshold", "metric": "asr", "subject": {"defense": "mcl"}, "op": "<", "value": 0.05}
    v = verdict(check, values, where={"attack": "sig"})
    assert v.verdict == "not testable" and "attack did not take" in v.reason
    per_attack = verdict(check, values, for_each=["attack"])
    assert per_attack.verdict == "not testable" and "badnets: " in per_attack.numbers
    assert "sig: attack did not take" in per_attack.reason
    assert verdict(check, values, for_each=["attack"], require="any").verdict == "holds"


def test_an_ungated_claim_reads_a_metric_that_never_saw_the_backdoored_model():
    """gated: false (seed 002's filters decide from an encoder, not from the classifier): the filter's kept share
    is judged even where the classifier's backdoor did not take; a gated claim on the same cells is not."""
    values = {("badnets", "none"): [(0.09, 0.6)], ("badnets", "ssl_cleanse"): [(0.08, 0.4)]}
    cells = frame(values).assign(poison_kept=[None, 0.04])
    check = {"kind": "threshold", "metric": "poison_kept", "subject": {"defense": "ssl_cleanse"}, "op": "<=", "value": 0.05}
    gated = cl.evaluate(claim(check), cells)[0]
    assert gated.verdict == "not testable" and "attack did not take" in gated.reason
    assert cl.evaluate(claim(check, gated=False), cells)[0].verdict == "holds"
    assert cl.evaluate(claim({**check, "value": 0.03}, gated=False), cells)[0].verdict == "fails"
    with pytest.raises(cl.ClaimError, match=r"claims\[0\]\.gated: 'no'; expected true or false"):
        claim(check, gated="no")


def test_cells_of_two_configurations_are_not_averaged_as_if_they_were_seeds():
    """A --set variant (here a second poison rate) beside the file's cell at the same seed: the claim reads
    neither as a mean of the two, it says which config paths differ."""
    import json

    cells = frame({("badnets", "none"): [(0.99, 0.9)], ("badnets", "mcl"): [(0.01, 0.9)]})
    extra = cells.iloc[[1]].assign(asr=0.5, key="variant")
    cells = pd.concat([cells, extra], ignore_index=True)
    cells["config"] = [json.dumps({"attack": {"name": "badnets", "poison_rate": r}, "seed": 0})
                       for r in (0.1, 0.1, 0.02)]
    check = {"kind": "threshold", "metric": "asr", "subject": {"defense": "mcl"}, "op": "<", "value": 0.05}
    v = cl.evaluate(claim(check), cells)[0]
    assert v.verdict == "not testable" and "2 cells differ in attack.poison_rate, not only in the seed" in v.reason


def test_missing_cells_and_paper_scale_are_not_testable():
    check = {"kind": "threshold", "metric": "asr", "subject": {"defense": "ibau"}, "op": "<", "value": 0.05}
    assert "missing cells" in verdict(check).reason
    paper = {"kind": "threshold", "metric": "asr", "subject": {"defense": "mcl"}, "op": "<", "value": 0.05}
    v = cl.evaluate(claim(paper, scale="paper"), frame(BASE, "mini"))[0]
    assert v.verdict == "not testable" and "would be: holds" in v.reason
    assert cl.evaluate(claim(paper, scale="paper"), frame(BASE, "paper"))[0].verdict == "holds"
    assert cl.evaluate(claim(paper, scale="paper"), frame(BASE, "full"))[0].verdict == "holds"   # no profile


def test_most_needs_more_than_half_of_the_parts():
    values = {("a1", "none"): [(0.99, 0.9)], ("a1", "mcl"): [(0.01, 0.9)],
              ("a2", "none"): [(0.99, 0.9)], ("a2", "mcl"): [(0.01, 0.9)],
              ("a3", "none"): [(0.99, 0.9)], ("a3", "mcl"): [(0.50, 0.9)]}
    check = {"kind": "threshold", "metric": "asr", "subject": {"defense": "mcl"}, "op": "<", "value": 0.05}
    rows = frame(values)
    assert cl.evaluate(claim(check, for_each=["attack"], require="most"), rows)[0].verdict == "holds"
    assert cl.evaluate(claim(check, for_each=["attack"]), rows)[0].verdict == "fails"


def test_the_committed_mini_record_runs_from_its_csv():
    record = cl.record_from_csv(ROOT / "reports" / "baselines" / "table1_mini.csv")
    assert len(record) == 60 and {"asr", "ba", "ra"} <= set(record.columns)      # 10 models x 6 (none + 5)
    verdicts = {v.claim.id: v for v in cl.evaluate(cl.load_claims("mcl"), record, scale="mini")}
    best = verdicts["mcl-best-asr"]
    # NC beats MCL on Trojan beyond the seed spread (7.89 vs 10.19 %); Blend, CL and Sig did not take (one seed
    # or more under 90 % before any defense) at mini scale
    assert best.verdict == "fails" and "clearly better: nc 7.89" in best.numbers
    assert all(f"{a}: attack did not take" in best.reason for a in ("blend", "cl", "sig"))


def test_every_committed_claims_file_loads_with_five_or_more_quoted_claims():
    for name in ("mcl", "dbr", "ssl", "lfd", "released"):
        claims = cl.load_claims(name)
        assert len(claims.claims) >= 5 and all(len(c.quote) > 20 for c in claims.claims)


GOOD = {"id": "c", "source": "s", "quote": "q",
        "check": {"kind": "threshold", "metric": "asr", "subject": {"defense": "mcl"}, "op": "<", "value": 0.05}}


@pytest.mark.parametrize("doc, message", [
    ({"claimz": [GOOD]}, "claimz: unknown key; did you mean 'claims'?"),
    ({"claims": [{**GOOD, "qoute": "x"}]}, "claims[0].qoute: unknown key; did you mean 'quote'?"),
    ({"claims": [{k: v for k, v in GOOD.items() if k != "quote"}]}, "claims[0].quote: missing"),
    ({"claims": [{**GOOD, "scale": "mini"}]}, "claims[0].scale: 'mini'; valid: any, paper"),
    ({"claims": [{**GOOD, "require": "mosst"}]}, "claims[0].require: 'mosst'; did you mean 'most'?"),
    ({"claims": [{**GOOD, "where": {"atack": "badnets"}}]}, "claims[0].where: 'atack' is not a cell column; did you mean 'attack'?"),
    ({"claims": [{**GOOD, "for_each": ["atack"]}]}, "claims[0].for_each: 'atack' is not a cell column; did you mean 'attack'?"),
    ({"claims": [{**GOOD, "check": {**GOOD["check"], "kind": "treshold"}}]}, "claims[0].check.kind: 'treshold'; did you mean 'threshold'?"),
    ({"claims": [{**GOOD, "check": {**GOOD["check"], "metric": "asrr"}}]}, "claims[0].check.metric: 'asrr'; did you mean 'asr'?"),
    ({"claims": [{**GOOD, "check": {**GOOD["check"], "op": "=<"}}]}, "claims[0].check.op: '=<'"),
    ({"claims": [{**GOOD, "check": {**GOOD["check"], "subject": {"defense": "mcll"}}}]}, "claims[0].check.subject.defense: unknown defense 'mcll'; did you mean 'mcl'?"),
    ({"claims": [{**GOOD, "check": {**GOOD["check"], "valeu": 1}}]}, "claims[0].check.valeu: unknown key; did you mean 'value'?"),
    ({"claims": [{**GOOD, "check": {**GOOD["check"], "value": "5%"}}]}, "claims[0].check.value: expected a number"),
    ({"claims": [{**GOOD, "check": {**GOOD["check"], "alpha": 5}}]}, "claims[0].check.alpha: 5; a test level in (0, 1)"),
    ({"claims": [{**GOOD, "check": {"kind": "compare", "metric": "asr", "subject": {"defense": "ft"}, "op": "<"}}]},
     "claims[0].check.other: missing"),
    ({"claims": [{**GOOD, "check": {"kind": "rank", "metric": "asr", "subject": {"defense": "ft"}, "among": {"defense": "ft"}}}]},
     "claims[0].check.among: expected one column with a list of values"),
])
def test_each_kind_of_claims_typo_names_the_key_path_and_the_closest_name(doc, message):
    with pytest.raises(cl.ClaimError) as err:
        cl.claims_from_dict(doc, "x.yaml")
    text = str(err.value)
    assert text.startswith("x.yaml: ") and message in text and "\n" not in text


def test_bench_check_claims_on_a_record_csv(tmp_path):
    record = ROOT / "reports" / "baselines" / "table1_mini.csv"
    run = CliRunner().invoke(main, ["check", str(record), "--claims", "mcl", "--scale", "mini"])
    assert run.exit_code == 1, run.output                        # mcl-best-asr fails on the mini record
    assert "[fails] mcl-best-asr" in run.output and "10 claims: 0 holds, 1 fails, 9 not testable" in run.output
    holds = tmp_path / "holds.yaml"
    holds.write_text("paper: t\nclaims:\n  - {id: nc-lowers-badnets, source: s, quote: q, where: {attack: badnets},"
                     " check: {kind: difference, metric: asr, subject: {defense: nc}, other: {defense: none},"
                     " op: '<', value: -0.5}}\n")
    run = CliRunner().invoke(main, ["check", str(record), "--claims", str(holds)])
    assert run.exit_code == 0 and "[holds] nc-lowers-badnets" in run.output, run.output


def test_bench_check_rejects_a_claims_typo_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("paper: t\nclaims:\n  - {id: a, source: s, quote: q, check: {kind: rank, metric: asr,"
                   " subject: {defense: mcl}, among: {defence: [ft, mcl]}}}\n")
    run = CliRunner().invoke(main, ["check", str(ROOT / "reports/baselines/table1_mini.csv"), "--claims", str(bad)])
    assert run.exit_code == 2
    assert "claims[0].check.among: 'defence' is not a cell column; did you mean 'defense'?" in run.output
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("claims:\n  - {id: a\n")
    run = CliRunner().invoke(main, ["check", str(ROOT / "reports/baselines/table1_mini.csv"), "--claims", str(syntax)])
    assert run.exit_code == 2 and f"{syntax}: not valid YAML: line 3, column 1" in run.output


def test_the_all_defenses_record_takes_dotted_options_from_its_configs():
    """The committed record is a ``bench export`` CSV: options such as defense.mode and defense.filter are read from
    each row's config column."""
    record = cl.record_from_csv(ROOT / "reports" / "records" / "all_defenses_mcl_setting_mini.csv")
    verdicts = {v.claim.id: v for v in cl.evaluate(cl.load_claims("dbr"), record)}
    assert verdicts["sd-split-precision"].verdict == "holds"                 # D-hat_c (trusted set) 99.98 %
    assert "trusted_precision dbr = 99.98" in verdicts["sd-split-precision"].numbers
    assert verdicts["dbr-asr-under-1"].verdict == "fails"                    # defense.mode read from config
    assert "asr dbr,defense.mode=unlearn_relearn = 99.94" in verdicts["dbr-asr-under-1"].numbers
    ssl = {v.claim.id: v for v in cl.evaluate(cl.load_claims("ssl"), record)}
    assert "clean_kept ssl_cleanse = 38.33" in ssl["filters-keep-clean"].numbers   # the kNN filter (Energy not re-run)


def test_the_verdicts_in_reproduction_md_are_what_the_engine_says():
    import re

    doc = (ROOT / "docs" / "REPRODUCTION.md").read_text()
    records = {"table1_mini": (cl.record_from_csv(ROOT / "reports/baselines/table1_mini.csv"), "mini"),
               "all_defenses_mini": (cl.record_from_csv(ROOT / "reports/records/all_defenses_mcl_setting_mini.csv"),
                                     None),
               "dbr_table2_mini": (cl.record_from_csv(ROOT / "reports/records/dbr_table2_mini.csv"), None),
               "ssl_table2_mini": (cl.record_from_csv(ROOT / "reports/records/ssl_table2_mini.csv"), None),
               "ssl_table2_mini_x3": (cl.record_from_csv(ROOT / "reports/records/ssl_table2_mini_x3.csv"), None),
               "lfd_table2_mini": (cl.record_from_csv(ROOT / "reports/records/lfd_table2_mini.csv"), None),
               "released_full": (cl.record_from_csv(ROOT / "reports/records/released_full.csv"), None)}
    rows = re.findall(r"\| `([\w-]+)` \([^|]*\) \| (?:any|paper) \| (\w+) \| \*\*([a-z ]+)\*\* \|", doc)
    assert len(rows) >= 15
    claims = {c.id: c for name in ("mcl", "dbr", "ssl", "lfd", "released") for c in cl.load_claims(name).claims}
    for cid, record, written in rows:
        frame, scale = records[record]
        assert cl.evaluate([claims[cid]], frame, scale)[0].verdict == written, (cid, record)


def test_a_claims_file_takes_numbers_in_scientific_notation(tmp_path):
    """YAML 1.2 floats (bench.config.load_yaml): `-5e-1` is -0.5, not the string PyYAML's 1.1 rule would give."""
    record = ROOT / "reports" / "baselines" / "table1_mini.csv"
    path = tmp_path / "sci.yaml"
    path.write_text("paper: t\nclaims:\n  - {id: nc-lowers-badnets, source: s, quote: q, where: {attack: badnets},"
                    " check: {kind: difference, metric: asr, subject: {defense: nc}, other: {defense: none},"
                    " op: '<', value: -5e-1, k: 1e0}}\n")
    check = cl.load_claims(str(path)).claims[0].check
    assert check["value"] == -0.5 and check["k"] == 1.0
    run = CliRunner().invoke(main, ["check", str(record), "--claims", str(path)])
    assert run.exit_code == 0 and "[holds] nc-lowers-badnets" in run.output, run.output
