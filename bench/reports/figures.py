"""Figures (Agg backend, deterministic files, one fixed colour per method): ablations, per-epoch curves,
per-sample score histograms and t-SNE of penultimate features."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from bench.reports.frames import _column, _display, add_derived, apply_filters
from bench.reports.specs import METRIC_DEFAULTS, MetricSpec, SpecError

_METHOD_ORDER = ("none", "ft", "nad", "ibau", "nc", "mcl", "anp", "mcr", "abl", "dbr", "dst", "dbd", "fp",
                 "ac", "ss", "lfd", "ssl_cleanse", "mesa")
_PALETTE = ("#4d4d4d", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#ff9896", "#c49c94", "#f7b6d2", "#9edae5")


def method_color(name: str) -> str:
    """The one colour of a method in every figure (known methods: a fixed slot; others: a stable hash)."""
    if name in _METHOD_ORDER:
        return _PALETTE[_METHOD_ORDER.index(name)]
    return _PALETTE[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(_PALETTE)]


def ablation_figure(frame: pd.DataFrame, x: str, y: str, out_stem: Path, hue: str = "defense",
                    filters: Mapping[str, Any] | None = None, scale: float = 100.0) -> list[Path]:
    """Metric ``y`` against ``x`` (a frame column or a dotted config path such as ``defense.tau``): one panel
    per (dataset, attack), one line per ``hue`` value in its fixed colour, error bars = std over seeds.

    Writes OUT_STEM.png and OUT_STEM.pdf (no timestamps in either, so reruns give identical files).

    Raises:
        SpecError: ``y`` is not a metric of the frame, or ``x`` is neither a column nor a config path.
    """
    plt = _pyplot()
    data = apply_filters(add_derived(frame), filters or {})
    if y not in data:
        raise SpecError(f"y={y}: no such metric in the sweep; valid: ba, asr, ra or a defense metric")
    data = data.assign(_x=_column(data, x)).dropna(subset=[y, "_x"])
    panels = list(dict.fromkeys(zip(data["dataset"], data["attack"]))) or [("", "")]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.0 * nrows), dpi=120, squeeze=False)
    label = METRIC_DEFAULTS.get(y, MetricSpec(y, y)).label or y
    for ax, (ds, atk) in zip(axes.flat, panels):
        part = data[(data["dataset"] == ds) & (data["attack"] == atk)]
        categories = _categories(data["_x"])
        for name, line in part.groupby(hue, sort=True):
            agg = line.groupby("_x")[y].agg(["mean", "std"]).sort_index()
            xs = [categories.index(v) for v in agg.index] if categories else agg.index.astype(float)
            ax.errorbar(xs, agg["mean"] * scale, yerr=agg["std"].fillna(0) * scale,
                        label=_display(hue, name), color=method_color(str(name)), marker="o", capsize=3)
        if categories:           # a categorical axis (LfD Fig. 4: the teacher) keeps the first-seen order
            ax.set_xticks(range(len(categories)), [_display("model", c) for c in categories], fontsize=7)
        ax.set_title(f"{_display('dataset', ds)} / {_display('attack', atk)}", fontsize=9)
        ax.set_xlabel(x)
        ax.set_ylabel(f"{label} (%)" if scale == 100 else label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return _save(fig, out_stem)


def _categories(values: pd.Series) -> list[Any]:
    """The x values in first-seen order when they are not all numbers (else [] for a numeric axis)."""
    vals = list(dict.fromkeys(values.tolist()))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
    return [] if numeric else vals


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "bdbench"
    return plt


def _save(fig: Any, out_stem: Path) -> list[Path]:
    """OUT_STEM.png and OUT_STEM.pdf without timestamps or version strings, so reruns give identical files."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    fig.savefig(paths[0], metadata={"Software": None})
    fig.savefig(paths[1], metadata={"CreationDate": None, "Producer": None, "Creator": None})
    plt.close(fig)
    return paths


def sweep_curves(storage: Any, sweep: str) -> pd.DataFrame:
    """Per-epoch curves of a sweep's defend jobs (sweeps with ``curves: true``), with the cell labels:
    dataset, attack, defense, defense_variant, seed, step, name, value."""
    from bench.db.baselines import run_curves
    from bench.results import variant_labels

    cells = [c for c in storage.cells(sweep) if c["chain"].get("defend")]
    if not cells:
        return pd.DataFrame(columns=["dataset", "attack", "defense", "defense_variant", "seed", "step", "name",
                                     "value"])
    variants = variant_labels([c["config"]["defense"] for c in cells])
    labels = pd.DataFrame([{"key": c["chain"]["defend"], "dataset": c["labels"].get("dataset"),
                            "attack": c["labels"].get("attack"), "defense": c["labels"].get("defense"),
                            "defense_variant": v, "seed": c["labels"].get("seed")} for c, v in zip(cells, variants)])
    curves = run_curves(storage, labels["key"].unique().tolist())
    return labels.drop_duplicates("key").merge(curves, on="key").drop(columns=["key"])


def curves_figure(curves: pd.DataFrame, out_stem: Path, metrics: Sequence[str] = ("ba", "asr"),
                  hue: str = "defense_variant", scale: float = 100.0) -> list[Path]:
    """Per-epoch curves (D-BR Fig. 5, LfD Fig. 1 and 5): one panel per (dataset, attack) and metric, one line
    per ``hue`` value in its method colour, mean over seeds with a ±std band.

    Raises:
        SpecError: none of ``metrics`` was recorded.
    """
    plt = _pyplot()
    data = curves[curves["name"].isin(metrics)]
    if data.empty:
        have = sorted(set(curves["name"])) if len(curves) else []
        raise SpecError(f"no curves for {', '.join(metrics)}; recorded: {', '.join(have) or 'none'} "
                        "(run the sweep with 'curves: true')")
    names = [m for m in metrics if m in set(data["name"])]
    panels = list(dict.fromkeys(zip(data["dataset"], data["attack"])))
    fig, axes = plt.subplots(len(panels), len(names), figsize=(3.8 * len(names), 2.8 * len(panels)), dpi=120,
                             squeeze=False)
    for row, (ds, atk) in enumerate(panels):
        for col, m in enumerate(names):
            ax = axes[row][col]
            part = data[(data["dataset"] == ds) & (data["attack"] == atk) & (data["name"] == m)]
            for name, line in part.groupby(hue, sort=True):
                base = str(line["defense"].iloc[0]) if "defense" in line else str(name)
                agg = line.groupby("step")["value"].agg(["mean", "std"]).sort_index()
                mean, std = agg["mean"] * scale, agg["std"].fillna(0) * scale
                color = method_color(base) if name == base else method_color(str(name))
                ax.plot(agg.index, mean, label=str(name), color=color)
                ax.fill_between(agg.index, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
            label = METRIC_DEFAULTS.get(m, MetricSpec(m, m)).label or m
            ax.set_title(f"{_display('dataset', ds)} / {_display('attack', atk)}: {label}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            ax.set_ylabel(f"{label} (%)" if scale == 100 else label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, out_stem)


def sweep_scores(storage: Any, store_root: str | Path, sweep: str, limit: int = 12) -> list[dict[str, Any]]:
    """The per-sample suspicion scores of a sweep's defend jobs that returned them, with ground truth:
    [{title, defense, scores (1-D array), poisoned (bool array)}], first ``limit`` cells."""
    import numpy as np

    from bench.attack import POISONED
    from bench.store import ArtifactStore

    store = ArtifactStore(store_root)
    out = []
    for c in storage.cells(sweep):
        defend, poison = c["chain"].get("defend"), c["chain"].get("poison")
        if not defend or not poison:
            continue
        arts = storage.artifacts([defend, poison])
        if "scores" not in arts[defend] or "poison" not in arts[poison]:
            continue
        scores = store.get(arts[defend]["scores"])["scores"]
        if scores is None:
            continue
        kind = store.get(arts[poison]["poison"])["kind"]
        lab = c["labels"]
        out.append({"title": f"{_display('attack', lab.get('attack'))} / {_display('defense', lab.get('defense'))}"
                             f" / seed {lab.get('seed')}", "defense": lab.get("defense"),
                    "scores": np.asarray(scores.detach().cpu().double()),
                    "poisoned": np.asarray((kind == POISONED).cpu())})
        if len(out) >= limit:
            break
    return out


def score_histogram(panels: Sequence[Mapping[str, Any]], out_stem: Path, bins: int = 50,
                    xlabel: str = "score (higher = more suspicious)") -> list[Path]:
    """Histograms of a defense's per-sample scores for clean vs poisoned training samples (D-BR Fig. 3: the
    FCT of clean and poisoned samples), one panel per entry of :func:`sweep_scores`; densities, shared bins."""
    import numpy as np

    if not panels:
        raise SpecError("no defense in the sweep returned per-sample scores (e.g. dbr, dst, ac, ss, ssl_cleanse)")
    plt = _pyplot()
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 2.8 * nrows), dpi=120, squeeze=False)
    for ax, p in zip(axes.flat, panels):
        scores, poisoned = np.asarray(p["scores"], dtype=float), np.asarray(p["poisoned"], dtype=bool)
        finite = np.isfinite(scores)
        edges = np.histogram_bin_edges(scores[finite], bins=bins)
        ax.hist(scores[finite & ~poisoned], bins=edges, density=True, alpha=0.6, color="#1f77b4", label="clean")
        ax.hist(scores[finite & poisoned], bins=edges, density=True, alpha=0.6, color="#d62728", label="poisoned")
        ax.set_title(p.get("title", ""), fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return _save(fig, out_stem)


def cell_features(storage: Any, store_root: str | Path, cell: Mapping[str, Any], stage: str = "defend",
                  per_class: int = 50, max_poisoned: int = 200, seed: int = 0,
                  data_root: str | None = None) -> dict[str, Any]:
    """Penultimate features (``bench.train.embed``) of a cell's model (``stage``: defend = after the defense,
    train = the backdoored model) on its poisoned training set: up to ``per_class`` clean images per class and
    ``max_poisoned`` poisoned ones, drawn with a seeded generator. ``cell`` is an entry of Storage.cells().

    Returns {features (N x D array), labels (original class), poisoned (bool)}.

    Raises:
        SpecError: the cell has no finished job of that stage (or its artifacts are gone).
    """
    import numpy as np
    import torch

    from bench.attack import POISONED, PoisonedSet
    from bench.models import create_from_spec
    from bench.stages import StageRunner
    from bench.train import embed

    runner = StageRunner(store_root, device="cpu", data_root=data_root)
    keys = {s: k for s, k in cell["chain"].items() if s in (stage, "poison")}
    arts = storage.artifacts(list(keys.values())) if len(keys) == 2 else {}
    if len(keys) < 2 or "poison" not in arts[keys["poison"]] or "model" not in arts[keys[stage]]:
        raise SpecError(f"cell {cell['key'][:12]}: no finished {stage} and poison jobs with artifacts")
    bundle = runner.dataset(cell["config"]["dataset"])
    poisoned = PoisonedSet.from_dict(runner.store.get(arts[keys["poison"]]["poison"]))
    saved = runner.store.get(arts[keys[stage]]["model"])
    model = create_from_spec(saved["spec"], bundle.info())
    model.load_state_dict(saved["state_dict"])
    model.eval()
    train = poisoned.apply(bundle.train)
    is_p = poisoned.kind == POISONED
    gen = torch.Generator().manual_seed(seed)
    pick = []
    for cls in torch.unique(bundle.train.labels):
        idx = torch.nonzero((bundle.train.labels == cls) & ~is_p).flatten()
        pick.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    pidx = torch.nonzero(is_p).flatten()
    pick.append(pidx[torch.randperm(len(pidx), generator=gen)[:max_poisoned]])
    idx = torch.cat(pick)
    feats = embed(model, train.images[idx])
    return {"features": np.asarray(feats.detach().cpu().double()), "labels": np.asarray(bundle.train.labels[idx]),
            "poisoned": np.asarray(is_p[idx])}


def tsne_figure(features: Any, labels: Any, poisoned: Any, out_stem: Path, title: str = "",
                seed: int = 0) -> list[Path]:
    """t-SNE (scikit-learn, seeded) of penultimate features: clean samples coloured by class, poisoned
    samples in black (MCL Fig. 1/3, LfD Fig. 7)."""
    import numpy as np
    from sklearn.manifold import TSNE

    plt = _pyplot()
    x = np.asarray(features, dtype=np.float64)
    labels, poisoned = np.asarray(labels), np.asarray(poisoned, dtype=bool)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    fig, ax = plt.subplots(figsize=(4.5, 4.2), dpi=120)
    cmap = plt.get_cmap("tab10" if len(np.unique(labels)) <= 10 else "tab20")
    for i, cls in enumerate(np.unique(labels)):
        m = (labels == cls) & ~poisoned
        ax.scatter(emb[m, 0], emb[m, 1], s=6, color=cmap(i % cmap.N), label=str(cls))
    ax.scatter(emb[poisoned, 0], emb[poisoned, 1], s=8, color="black", label="poisoned")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2)
    return _save(fig, out_stem)

