"""Paper vs ours: the transcribed paper numbers (``reports/reference/*.csv``) beside ours, with the difference."""
from __future__ import annotations

import pandas as pd

from bench.reports.render import _view
from bench.reports.tables import Table


def paper_vs_ours(table: Table, reference: pd.DataFrame) -> pd.DataFrame:
    """Both numbers and ours - paper (points) for every cell of ``table`` the paper also reports.

    Our rows are matched to the paper's through the spec's display labels (``labels`` / the group labels),
    so the reference CSV keeps the paper's spelling ('Cifar-10', 'BadNets', 'I-BAU').
    """
    view, spec = _view(table), table.spec
    ref = reference.set_index(["dataset", "attack", "defense", "metric"])["value"].to_dict()
    out = []
    for ri, row in enumerate(view["rows"]):
        labels = dict(zip(spec.rows, row["labels"]))
        for gi, g in enumerate(table.groups):
            for m in spec.metrics:
                paper = ref.get((labels.get("dataset"), labels.get("attack"), g.label, m.name))
                s = table.stats[(ri, gi, m.name)]
                ours = None if s is None else s.mean * m.scale
                if paper is None:
                    continue
                out.append({**labels, "group": g.label, "metric": m.name, "paper": paper, "ours": ours,
                            "diff": None if ours is None else ours - paper, "n": 0 if s is None else s.n})
    return pd.DataFrame(out)

