"""The job graph: [generate ->] poison -> train -> [prepare ->] defend -> evaluate, each stage keyed by content.

key = sha256(canonical JSON of {stage, plugin, plugin version, the stage's own resolved config, parent key}).
A stage's config holds only what changes its output, so

* a backdoored model is trained once per (dataset, attack, model, recipe, seed) and reused by every defense,
  clean ratio and later sweep;
* changing a defense's hyper-parameter never changes a train key;
* a training-time or cleansing defense hangs off the poison stage, so no backdoored model is trained for it;
* a defense that declares no ``clean_subset`` need does not carry the clean ratio in its key (a ratio curve
  runs D-BR once, not once per ratio).
An attack that needs a clean model (label-consistent PGD, TrojanNN) gets a parent train stage on the clean set.
An attack with a trained trigger generator (``Attack.generator_fields``: input-aware dynamic, SSBA's encoder, ...)
gets a ``generate`` stage above its poison stage, keyed by the dataset, the seed and only the generator's own
config fields, so one generator serves every poison rate, defense and later sweep that shares them.
A defense with a shared preparation (``Defense.prepare_fields``: seed 002's SimCLR embedding) gets a ``prepare``
stage between the defend stage's parent and the defend stage, keyed by the defense's name, those fields, the seed,
the model and (when it reads one) the clean subset, so its kNN, Energy and kNN+Energy filters train one encoder.

A checkpoint cell (``model: {name, checkpoint: FILE, ...}``, bench/models/checkpoint.py) has no backdoor
training: its train stage is the root, plugin ``checkpoint``, keyed by the file's sha256 (its path is stored
with the job, not hashed); its poison stage hangs below it and only describes the trigger for evaluation
(``trigger_only``: no poisoned training set is made).  Defenses that need the poisoned training set
(training-time, cleansing, D-BR) and attacks that optimise their trigger on a clean model are refused for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from bench.config import ConfigError, digest, to_plain
from bench.registry import ATTACKS, DEFENSES
from bench.sweep import Cell

TRAIN_VERSION = 1          # bump when bench.train.fit changes its output for the same config
CHECKPOINT_VERSION = 1     # bump when bench.models.checkpoint loads a file differently
EVAL_VERSION = 1           # bump when bench.metrics changes
POISON_VERSION = 2         # bump when the poison stage draws differently (2: its own seed stream, bench.train.stream_seed)
STAGES = ("generate", "poison", "train", "prepare", "defend", "evaluate")
_NOT_SEMANTIC = {"dataset": ("root", "download")}   # where data lives does not change a result


@dataclass(frozen=True)
class Job:
    key: str
    stage: str
    plugin: str
    version: int
    config: dict[str, Any]             # the stage's own resolved config (what the key hashes)
    parent: str | None
    chain: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # merged ancestor configs


def make_job(stage: str, plugin: str, version: int, config: dict[str, Any], parent: Job | None,
             harness: int = 1) -> Job:
    """``harness``: the version of the stage's own mechanics (above 1 it enters the key; 1 keeps older keys)."""
    keyed = {"stage": stage, "plugin": plugin, "version": version, "config": _keyed(config),
             "parent": parent.key if parent else None}
    key = digest(keyed if harness == 1 else {**keyed, "harness": harness})
    chain = {**(parent.chain if parent else {}), **config}
    return Job(key, stage, plugin, version, config, parent.key if parent else None, chain)


def _keyed(config: dict[str, Any]) -> dict[str, Any]:
    """What a key hashes: the config, less where a checkpoint file lies (its sha256 identifies it)."""
    model = config.get("model")
    if isinstance(model, dict) and "checkpoint" in model:
        return {**config, "model": {k: v for k, v in model.items() if k != "checkpoint"}}
    return config


def _semantic(kind: str, cfg: dict[str, Any]) -> dict[str, Any]:
    drop = _NOT_SEMANTIC.get(kind, ())
    return {k: v for k, v in cfg.items() if k not in drop}


def stale_stages(versions: dict[str, tuple[str, int]]) -> list[str]:
    """Which of a stored cell's jobs ran another version of their plugin than this code registers, as
    "ibau v1 (now v2)" (``versions``: stage -> (plugin, version), ``Storage.cells``).  Such a result is not what
    running its config today gives: a report leaves it out."""
    fixed = {"train": TRAIN_VERSION, "checkpoint": CHECKPOINT_VERSION, "evaluate": EVAL_VERSION}
    out = []
    for stage, (plugin, version) in versions.items():
        if plugin in fixed:
            now = fixed[plugin]
        else:
            registry = DEFENSES if stage in ("prepare", "defend") else ATTACKS
            now = registry.get(plugin).obj.version if plugin in registry else version
        if version != now:
            out.append(f"{plugin} v{version} (now v{now})")
    return out


def cell_jobs(cell: Cell) -> list[Job]:
    """The chain of jobs of one cell, parents first (the last one is the cell's evaluate job)."""
    attack_cls = ATTACKS.get(cell.attack["name"]).obj
    defense_cls = DEFENSES.get(cell.defense["name"]).obj
    dataset = _semantic("dataset", cell.dataset)
    if "checkpoint" in cell.model:
        return checkpoint_jobs(cell, dataset)
    jobs: list[Job] = []
    surrogate = None
    if attack_cls.needs_clean_model:
        none = ATTACKS.get("none")     # the same clean model a cell with attack 'none' trains (shared)
        clean_poison = make_job("poison", "none", none.version, {"dataset": dataset, "seed": cell.seed,
                                "attack": {"name": "none", **to_plain(none.parse({}))}}, None, POISON_VERSION)
        surrogate = make_job("train", "train", TRAIN_VERSION,
                             {"model": cell.model, "recipe": cell.recipe, "seed": cell.seed}, clean_poison)
        jobs += [clean_poison, surrogate]
    above = surrogate
    if attack_cls.generator_fields:
        generator = shared_config(cell.attack, attack_cls.generator_fields)
        above = make_job("generate", cell.attack["name"], attack_cls.version,
                         {"dataset": dataset, "seed": cell.seed, "generator": generator}, surrogate)
        jobs.append(above)
    poison = make_job("poison", cell.attack["name"], attack_cls.version,
                      {"dataset": dataset, "attack": cell.attack, "seed": cell.seed}, above, POISON_VERSION)
    jobs.append(poison)
    defend_cfg = _defend_config(cell, defense_cls)
    if defense_cls.paradigm != "post_training":    # training-time / cleansing: trains a model from the poisoned set
        defend_cfg |= {"model": cell.model, "recipe": cell.recipe}
    parent = poison
    if defense_cls.reads_backdoored_model(cell.defense):   # the model the cell without a defense trains (cached)
        parent = make_job("train", "train", TRAIN_VERSION,
                          {"model": cell.model, "recipe": cell.recipe, "seed": cell.seed}, poison)
        jobs.append(parent)
    jobs += _defend_jobs(cell, defense_cls, defend_cfg, parent)
    return jobs


def _defend_jobs(cell: Cell, defense_cls, defend_cfg: dict[str, Any], parent: Job) -> list[Job]:
    """[prepare ->] defend -> evaluate below ``parent``."""
    jobs = []
    if defense_cls.prepare_fields:
        shared = {k: defend_cfg[k] for k in ("seed", "model", "clean_ratio", "clean_stratified", "clean_val")
                  if k in defend_cfg}
        parent = make_job("prepare", cell.defense["name"], defense_cls.version,
                          {"prepare": shared_config(cell.defense, defense_cls.prepare_fields), **shared}, parent)
        jobs.append(parent)
    defend = make_job("defend", cell.defense["name"], defense_cls.version, defend_cfg, parent)
    return jobs + [defend, make_job("evaluate", "evaluate", EVAL_VERSION, {}, defend)]


def shared_config(spec: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """What a shared stage hashes of a resolved plugin config: its name and the stage's own fields (an attack's
    ``generator_fields`` for its generate stage, a defense's ``prepare_fields`` for its prepare stage)."""
    return {"name": spec["name"], **{f: spec[f] for f in fields}}


def _defend_config(cell: Cell, defense_cls) -> dict[str, Any]:
    cfg: dict[str, Any] = {"defense": cell.defense, "seed": cell.seed, "curves": cell.curves}
    if "clean_subset" in defense_cls.needs:
        cfg |= {"clean_ratio": cell.clean_ratio, "clean_stratified": cell.clean_stratified}
        if not defense_cls.uses_clean_val:      # the whole subset, no held-out slice (keys of the others unchanged)
            cfg["clean_val"] = False
    return cfg


def checkpoint_jobs(cell: Cell, dataset: dict[str, Any]) -> list[Job]:
    """A checkpoint cell: checkpoint (train) -> trigger description (poison) -> defend -> evaluate.

    Raises:
        ConfigError: a defense that needs the poisoned training set, or an attack whose trigger needs a clean
        model, on a checkpoint cell.
    """
    attack_cls = ATTACKS.get(cell.attack["name"]).obj
    defense_cls = DEFENSES.get(cell.defense["name"]).obj
    file = cell.model["checkpoint"]
    if defense_cls.paradigm != "post_training" or "poisoned_train" in defense_cls.needs \
            or "backdoored_model" not in defense_cls.needs:
        raise ConfigError("grid.defense", f"defense {cell.defense['name']!r} ({defense_cls.paradigm}) needs "
                          f"the poisoned training set, which a checkpoint cell ({file}) does not have; valid: a "
                          "post-training defense that needs only the model and a clean subset (none, ft, nad, "
                          "ibau, nc, mcl, anp, mcr, fp)")
    if attack_cls.needs_clean_model or attack_cls.generator_fields:
        raise ConfigError("grid.attack", f"attack {cell.attack['name']!r} optimises its trigger on a "
                          f"harness-trained model or generator, so it cannot describe the trigger of {file}; valid: an "
                          "attack whose trigger is fixed by its config and seed (badnets, blend, sig, wanet, ...)")
    source = make_job("train", "checkpoint", CHECKPOINT_VERSION, {"dataset": dataset, "model": cell.model}, None)
    poison = make_job("poison", cell.attack["name"], attack_cls.version,
                      {"dataset": dataset, "attack": cell.attack, "seed": cell.seed, "trigger_only": True}, source)
    return [source, poison, *_defend_jobs(cell, defense_cls, _defend_config(cell, defense_cls), poison)]


@dataclass
class Graph:
    jobs: dict[str, Job]               # key -> job, in insertion (topological) order
    cells: list[tuple[Cell, str]]      # each cell with its evaluate key

    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {k: [] for k in self.jobs}
        for job in self.jobs.values():
            if job.parent:
                out[job.parent].append(job.key)
        return out

    def by_stage(self) -> dict[str, list[Job]]:
        out: dict[str, list[Job]] = {s: [] for s in STAGES}
        for job in self.jobs.values():
            out[job.stage].append(job)
        return out

    def ancestors(self, key: str) -> list[str]:
        out, cur = [], self.jobs[key].parent
        while cur:
            out.append(cur)
            cur = self.jobs[cur].parent
        return out


def build_graph(cells: Iterable[Cell]) -> Graph:
    jobs: dict[str, Job] = {}
    out = []
    for cell in cells:
        chain = cell_jobs(cell)
        for job in chain:
            jobs.setdefault(job.key, job)
        out.append((cell, chain[-1].key))
    return Graph(jobs, out)
