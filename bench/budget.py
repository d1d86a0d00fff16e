"""Step budgets: what every schedule field of every recipe and defense counts, so a profile can keep it.

A schedule field counts in one of three units (the table ``SCHEDULES`` below says which, per plugin):

    train   epochs over the poisoned training set, or over a fixed share of it (D-BR's D̂_c + D̂_p, ABL's
            isolated 1 %): at n training images instead of the paper's N, the paper's optimizer steps take
            N / n times the epochs;
    clean   epochs over the defender's clean subset (clean_ratio x n images): the same factor N / n;
    steps   optimizer steps, or epochs over a set whose size does not follow n (MCR tiles the clean subset to
            10,000 samples per epoch; a DBD MixMatch epoch is 1,024 iterations): never scaled.

A profile that shrinks the training set (``dataset.train_limit``) keeps each stage's paper steps: a train or
clean field becomes ``round(value * N / n)``, at most the profile's stated maximum for that field (its
``budget`` section, keyed like an overlay: ``budget: {recipe: {epochs: 40}, defense: {dst: {ctl_epochs: 40}}}``);
a steps field keeps its value, capped the same way.  The fields a stage lists in ``follow`` are in that
stage's epochs (milestones, a ramp-up, an early-stop patience) and move by the realised factor (new / old), so
a schedule keeps its shape.  What the profile or ``--set`` states explicitly for a field wins over this.

``N`` is the dataset's full training-set size (``PAPER_TRAIN_SIZE``): the papers train on the whole set.

Model-valued fields (``MODEL_FIELDS``, e.g. LfD's teacher) follow the profile's ``model`` map as the cell's
model does: ``model: {resnet_s2: {name: small_cnn, width: 8}}`` turns a ResNet-S2 teacher into that CNN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Collection, Literal, Mapping

from bench.config import ConfigError, closest

Unit = Literal["train", "clean", "steps"]

# Full training sets (the paper scale): torchvision / the offline copies in ../shared/datasets (README there).
PAPER_TRAIN_SIZE = {"cifar10": 50_000, "cifar100": 50_000, "mnist": 60_000, "gtsrb": 39_209, "digits": 1_437}


@dataclass(frozen=True)
class Stage:
    """One schedule field.

    Attributes:
        unit: what one unit of the field passes over (module docstring).
        batch: the config field holding the stage's batch size ("recipe.batch_size": the cell's recipe; None:
            not known here, so its samples are not counted).
        counts: "epochs" (passes over a set) or "steps" (the value counts optimizer steps itself).
        share: the share of the set one epoch passes over: a number, or config fields whose values add up.
        follow: fields in this stage's epochs, moved by the realised factor.
        epoch_samples / epoch_steps: a fixed epoch (MCR's 10,000 samples; DBD's ``semi_iterations`` steps).
        when: (field, value) - the stage runs only when that config field has that value.
        none_is_recipe_when: a None value means "the cell's recipe as it is" (AC's and SS's teacher), counted only
            when this config field is set: then the defense trains that model itself (AC's ``teacher_augment``
            override); otherwise it reads the train stage's model (``Defense.reads_backdoored_model``), whose steps
            that stage counts.
        runs: how many times the stage runs with this schedule (NAD: the teacher's fine-tune, then distillation).
    """

    unit: Unit
    batch: str | None = "batch_size"
    counts: Literal["epochs", "steps"] = "epochs"
    share: float | tuple[str, ...] = 1.0
    follow: tuple[str, ...] = ()
    epoch_samples: int | None = None
    epoch_steps: str | None = None
    when: tuple[str, Any] | None = None
    none_is_recipe_when: str | None = None
    runs: int = 1


_SD = {"sd_train_epochs": Stage("train", "sd_batch_size"),
       "sd_finetune_epochs": Stage("train", "sd_batch_size", follow=("sd_cosine_tmax",)),
       "abl_epochs": Stage("train", "sd_batch_size", when=("sd_metric", "abl_lga"))}
_FT = {"epochs": Stage("clean", follow=("milestones",))}
_TEACHER = {"teacher_epochs": Stage("train", "recipe.batch_size", none_is_recipe_when="teacher_augment")}

# kind -> plugin name ("*": every recipe) -> field -> Stage
SCHEDULES: dict[str, dict[str, dict[str, Stage]]] = {
    "recipe": {"*": {"epochs": Stage("train", follow=("milestones", "step_size", "warmup_epochs"))}},
    "defense": {
        "ft": _FT,
        "nad": {"epochs": Stage("clean", follow=("milestones",), runs=2)},
        "fp": {"ft_epochs": Stage("clean")},
        "ibau": {"n_rounds": Stage("clean")},
        "anp": {"iterations": Stage("steps", counts="steps")},
        "nc": {"inv_epochs": Stage("clean", "inv_batch_size", follow=("inv_early_stop",)), **_FT},
        "mcl": {"inv_epochs": Stage("clean", "inv_batch_size", follow=("inv_early_stop",),
                                    when=("trigger_source", "nc")),
                "mesa_steps": Stage("steps", None, "steps", when=("trigger_source", "mesa")), **_FT},
        # MCR's epoch is the clean subset tiled to 10,000 samples (the original's loader), whatever its size.
        "mcr": {"curve_epochs": Stage("steps", epoch_samples=10_000),
                "endpoint_epochs": Stage("steps", epoch_samples=10_000)},
        "dbr": {**_SD, "rounds": Stage("train", share=("alpha_c", "alpha_p"))},
        "dst": {**_SD, "ctl_epochs": Stage("train", "ctl_batch_size", follow=("ctl_warmup_epochs",)),
                "cls_epochs": Stage("train", "cls_batch_size")},
        "abl": {"isolation_epochs": Stage("train"), "recover_epochs": Stage("train", follow=("recover_milestones",)),
                "unlearn_epochs": Stage("train", share=("isolation_ratio",))},
        "dbd": {"simclr_epochs": Stage("train", "simclr_batch_size"),
                "warmup_epochs": Stage("train", "warmup_batch_size"),
                "semi_epochs": Stage("steps", "semi_batch_size", epoch_steps="semi_iterations",
                                     follow=("rampup_epochs",))},
        "lfd": {"teacher_epochs": Stage("train", "teacher_batch_size"), "epochs": Stage("train")},
        "ac": _TEACHER,
        "ss": _TEACHER,
        "ssl_cleanse": {"simclr_epochs": Stage("train", "simclr_batch_size", when=("encoder", "simclr")),
                        "ae_epochs": Stage("train", "ae_batch_size", when=("encoder", "autoencoder")),
                        "supcon_epochs": Stage("train", "supcon_batch_size", when=("classifier", "supcon")),
                        "linear_epochs": Stage("train", "linear_batch_size", when=("classifier", "supcon"))},
    },
}
# Trigger generators (the ``generate`` stage of attacks with ``generator_fields``): same units.  Dynamic's mask
# network and joint generator epochs pass over the training set (Nguyen & Tran's loader); SSBA's encoder too;
# adaptive's surrogate SimCLR passes over the training set and its patch optimisation over the non-target images
# (0.9 of them on a balanced 10-class set); l2_invisible counts Adam steps.
SCHEDULES["attack"] = {
    "dynamic": {"mask_epochs": Stage("train", "gen_batch_size", follow=("mask_milestones",)),
                "gen_epochs": Stage("train", "gen_batch_size", follow=("gen_milestones", "classifier_milestones"))},
    "ssba": {"gen_epochs": Stage("train", "gen_batch_size")},
    "adaptive": {"simclr_epochs": Stage("train", "simclr_batch_size"),
                 "opt_epochs": Stage("train", "opt_batch_size", share=0.9)},
    "l2_invisible": {"opt_steps": Stage("steps", "opt_batch_size", counts="steps")},
}
# Capped but not a stage of its own (a length inside another stage's epoch).
CAP_ONLY = {"defense": {"dbd": ("semi_iterations",)}}
# Fields naming a model: field -> the field that takes the replacement's options.
MODEL_FIELDS = {"lfd": {"teacher": "teacher_options"}, "dynamic": {"classifier": "classifier_options"}}


def stages_of(kind: str, name: str) -> dict[str, Stage]:
    table = SCHEDULES.get(kind, {})
    return table.get(name, table.get("*", {}))


def train_size(dataset: Mapping[str, Any]) -> int | None:
    """Training images of a resolved dataset config at its scale (None: the full size is not known here)."""
    full = PAPER_TRAIN_SIZE.get(dataset["name"])
    if dataset["name"] == "synthetic":
        full = dataset.get("n_train")
    limit = dataset.get("train_limit")
    if full is None:
        return limit
    return min(full, limit) if limit else full


def paper_size(dataset: Mapping[str, Any]) -> int | None:
    return train_size({**dataset, "train_limit": None})


def factor(dataset: Mapping[str, Any]) -> float:
    """N_paper / n: how many more epochs the same optimizer steps take on this dataset's (limited) set."""
    n, full = train_size(dataset), paper_size(dataset)
    return full / n if n and full else 1.0


# ----------------------------------------------------------------------------------------------------------
# profile application
# ----------------------------------------------------------------------------------------------------------
def check_caps(budget: Any, where: str) -> None:
    """The profile's ``budget`` section names only schedule fields, with non-negative integer caps."""
    from bench.registry import REGISTRIES

    if not isinstance(budget, Mapping):
        raise ConfigError(where, "expected {recipe: {FIELD: MAX}, defense: {NAME: {FIELD: MAX}}}")
    for kind, per in budget.items():
        if kind not in SCHEDULES:
            raise ConfigError(f"{where}.{kind}", f"unknown key; {closest(str(kind), SCHEDULES)}")
        items = [("*", per)] if kind == "recipe" else list((per or {}).items())
        for name, caps in items:
            path = f"{where}.{kind}" + ("" if name == "*" else f".{name}")
            if name != "*" and name not in REGISTRIES[kind]:
                raise ConfigError(path, f"not a {kind} name; {closest(str(name), REGISTRIES[kind].names())}")
            valid = [*stages_of(kind, name), *CAP_ONLY.get(kind, {}).get(name, ())]
            for key, cap in (caps or {}).items():
                if key not in valid:
                    raise ConfigError(f"{path}.{key}", f"not a schedule field; {closest(str(key), valid)}")
                if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
                    raise ConfigError(f"{path}.{key}", f"expected a maximum count (an integer >= 0), got {cap!r}")


def scaled(kind: str, paper: Mapping[str, Any], dataset: Mapping[str, Any], profile: Mapping[str, Any],
           explicit: Mapping[str, Any] | None = None) -> dict:
    """The fields a profile changes in one resolved paper-scale config: scaled schedules and mapped models.

    Args:
        kind: "recipe", "defense" or "attack"; paper: the config resolved without the profile (plugin defaults < per
            dataset < sweep entry); dataset: the cell's dataset resolved with the profile; profile: the overlay.
        explicit: the values the profile or ``--set`` states for this entry. An explicit schedule field is kept as
            stated (no cap), and its followers move with it unless they are explicit too: ``--set
            attack.dynamic.gen_epochs=30`` under mini puts the generator's lr steps at 30/600 of the paper's
            milestones, not where the 2-epoch cap had put them (issue 22: they had stayed at [1], so the 30- and
            60-epoch probes ran 29 and 59 epochs at a tenth of the learning rate).
    """
    explicit = explicit or {}
    name = paper["name"]
    budget = profile.get("budget") or {}
    caps = dict(budget.get("recipe") or {}) if kind == "recipe" else dict((budget.get(kind) or {}).get(name) or {})
    k = factor(dataset)
    out: dict[str, Any] = {}
    for field, stage in stages_of(kind, name).items():
        value = paper.get(field)
        if value is None:
            continue
        new = value if stage.unit == "steps" else max(1, round(value * k)) if value else 0
        new = min(new, caps.get(field, new))
        stated = explicit.get(field)
        if isinstance(stated, int) and not isinstance(stated, bool):
            new = stated
        out[field] = new
        for follower in stage.follow:
            if follower in paper and value and follower not in explicit:
                out[follower] = _follow(paper[follower], new / value, new)
    for field in CAP_ONLY.get(kind, {}).get(name, ()):
        if field in caps:
            out[field] = min(paper[field], caps[field])
    if kind in ("defense", "attack"):
        out |= _mapped_models(name, paper, profile.get("model") or {})
    return out


def _follow(value: Any, ratio: float, epochs: int) -> Any:
    """A follower at the realised ratio: milestones stay strictly inside (0, epochs), sorted and distinct."""
    if isinstance(value, (list, tuple)):
        moved = sorted({max(1, round(m * ratio)) for m in value})
        return [m for m in moved if m < epochs]
    return max(1, round(value * ratio)) if value else value


def _mapped_models(name: str, paper: Mapping[str, Any], models: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, options_field in MODEL_FIELDS.get(name, {}).items():
        rep = models.get(paper.get(field))
        if isinstance(rep, str):
            out |= {field: rep, options_field: {}}
        elif isinstance(rep, Mapping):
            opts = {k: v for k, v in rep.items() if k != "name"}
            out |= {field: rep.get("name", paper[field]), options_field: {**paper.get(options_field, {}), **opts}}
    return out


# ----------------------------------------------------------------------------------------------------------
# optimizer steps and samples seen (for ``bench sweep --dry-run``)
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Count:
    steps: int
    samples: int


def count(kind: str, cfg: Mapping[str, Any], recipe: Mapping[str, Any], n: int, clean_ratio: float = 0.05,
          only: Collection[str] | None = None, skip: Collection[str] = ()) -> Count:
    """Optimizer steps and samples seen by a train job (``kind`` "recipe") or a defend job, at ``n`` training
    images.  Each stage's steps are epochs x batches per epoch (the last partial batch counted); inversions run
    once per scanned class are counted once; a cleansing defense's retraining on the kept set is not counted.
    ``only`` / ``skip``: schedule fields to count / leave out (a prepare job counts its ``prepare_fields``, its
    defend job the rest)."""
    steps = samples = 0
    for field, stage in stages_of(kind, cfg["name"]).items():
        if field in skip or (only is not None and field not in only):
            continue
        if stage.when and cfg.get(stage.when[0]) != stage.when[1]:
            continue
        value = cfg.get(field)
        if value is None and stage.none_is_recipe_when and cfg.get(stage.none_is_recipe_when) is not None:
            value = recipe["epochs"]
        if not value:
            continue
        value *= stage.runs
        batch = recipe["batch_size"] if stage.batch == "recipe.batch_size" else cfg.get(stage.batch, 0)
        if stage.counts == "steps":
            steps, samples = steps + value, samples + value * batch
            continue
        if stage.epoch_steps:
            per_steps = cfg[stage.epoch_steps]
            steps, samples = steps + value * per_steps, samples + value * per_steps * batch
            continue
        size = stage.epoch_samples or _set_size(stage, cfg, n, clean_ratio)
        steps += value * math.ceil(size / batch)
        samples += value * size
    return Count(steps, samples)


def _set_size(stage: Stage, cfg: Mapping[str, Any], n: int, clean_ratio: float) -> int:
    base = round(n * clean_ratio) if stage.unit == "clean" else n
    share = stage.share if isinstance(stage.share, float) else sum(float(cfg[f]) for f in stage.share)
    return max(1, round(base * share))


def job_lines(graph) -> list[str]:
    """One line per generate, train, prepare and defend job of a ``bench.graph.Graph``: its optimizer steps and
    samples seen at the sweep's scale beside the paper-scale values (the cell resolved without the profile)."""
    from bench.registry import DEFENSES

    lines, seen = [], set()
    for cell, key in graph.cells:
        n, full = train_size(cell.dataset), paper_size(cell.dataset)
        paper = {"recipe": cell.recipe, "defense": cell.defense, "attack": cell.attack, **cell.paper}
        for job_key in reversed(graph.ancestors(key)):
            job = graph.jobs[job_key]
            if job.stage not in ("generate", "train", "prepare", "defend") or job_key in seen or not n:
                continue
            seen.add(job_key)
            if job.stage == "train" and cell.model.get("checkpoint"):
                continue                                         # loaded from a file: no training at any scale
            if job.stage == "generate":
                label = f"{cell.attack['name']} generator"
                now = count("attack", cell.attack, cell.recipe, n)
                then = count("attack", paper["attack"], paper["recipe"], full or n)
            elif job.stage == "train":
                label = f"{cell.recipe['name']} ({cell.model['name']})"
                now = count("recipe", cell.recipe, cell.recipe, n)
                then = count("recipe", paper["recipe"], paper["recipe"], full or n)
            else:
                shared = set(DEFENSES.get(cell.defense["name"]).obj.prepare_fields)
                part = {"only": shared} if job.stage == "prepare" else {"skip": shared}
                label = cell.defense["name"] + (" (shared)" if job.stage == "prepare" else "")
                now = count("defense", cell.defense, cell.recipe, n, cell.clean_ratio, **part)
                then = count("defense", paper["defense"], paper["recipe"], full or n, cell.clean_ratio, **part)
            if now.steps or then.steps:
                lines.append(f"    {job.stage:<8} {job_key[:10]}  {label:<26} {now.steps:>9,} / {then.steps:>9,} steps"
                             f"  {_short(now.samples):>7} / {_short(then.samples):>7} samples")
    return lines


def _short(x: int) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return str(x)
