"""What each stage does, given its job and its ancestors' artifacts. Runs inside a worker (or in-process).

Each executor reads only the configs that are part of its key (``task.chain``) and the artifacts of its
ancestors (``task.inputs``), writes its own artifacts to the store and returns metrics; the scheduler writes
the database.  Datasets stay warm in the worker between jobs.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.attack import CLEAN, Attack, PoisonedSet
from bench.config import digest
from bench.data.clean import clean_subset
from bench.data.datasets import load_dataset
from bench.data.imageset import DataBundle, ImageSet
from bench.defense import Curves, Defense, DefenseContext, DefenseResult
from bench.metrics import (
    Metric,
    backdoor_metrics,
    cleansing_metrics,
    detection_metrics,
    knn_health,
    relabel_metrics,
)
from bench.models import create_from_spec
from bench.models.checkpoint import load_checkpoint_model
from bench.recipes import Recipe
from bench.registry import ATTACKS, DATASETS, DEFENSES
from bench.store import ArtifactRecord, ArtifactStore
from bench.train import fit, pick_device, seed_everything, stream_seed


@dataclass
class Task:
    """A job as a worker sees it: its key, stage, merged configs, and its ancestors' artifact records."""

    key: str
    stage: str
    chain: dict[str, Any]
    lineage: dict[str, str]                              # stage -> nearest ancestor key of that stage
    inputs: dict[str, dict[str, ArtifactRecord]]         # ancestor key -> kind -> record


@dataclass
class Outcome:
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    device: str = ""
    peak_mem_mb: float | None = None
    duration_s: float = 0.0


class StageRunner:
    """Executes tasks; one per worker process, keeping decoded datasets in memory."""

    def __init__(self, store_root: str | Path, device: str | None = None, data_root: str | None = None):
        self.store = ArtifactStore(store_root)
        self.device = pick_device(device)
        self.data_root = data_root
        self._datasets: dict[str, DataBundle] = {}

    # -- inputs --------------------------------------------------------------------------------------------
    def dataset(self, spec: dict[str, Any]) -> DataBundle:
        key = digest(spec)
        if key not in self._datasets:
            opts = dict(spec)
            name = opts.pop("name")
            cfg = DATASETS.get(name).parse(opts)
            self._datasets[key] = load_dataset(name, cfg, self.data_root)
        return self._datasets[key]

    def load(self, task: Task, stage: str, kind: str) -> Any:
        return self.store.get(task.inputs[task.lineage[stage]][kind])

    def attack(self, task: Task, bundle: DataBundle, poisoned: PoisonedSet | None = None) -> Attack:
        spec = dict(task.chain["attack"])
        entry = ATTACKS.get(spec.pop("name"))
        attack = entry.obj(entry.parse(spec), bundle.info(), task.chain["seed"])
        if "generate" in task.lineage:             # a trained trigger generator, from its cached stage
            attack.load_generator(self.load(task, "generate", "generator"))
        if poisoned is not None and poisoned.state:
            attack.load_state(poisoned.state)
        return attack

    def model(self, task: Task, stage: str, bundle: DataBundle) -> torch.nn.Module:
        saved = self.load(task, stage, "model")
        model = create_from_spec(saved["spec"], bundle.info())
        model.load_state_dict(saved["state_dict"])
        return model.to(self.device).eval()

    def put_model(self, key: str, model: torch.nn.Module, spec: dict) -> ArtifactRecord:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return self.store.put(key, "model", {"spec": spec, "state_dict": state})

    # -- dispatch ------------------------------------------------------------------------------------------
    def run(self, task: Task) -> Outcome:
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        out = getattr(self, f"run_{task.stage}")(task)
        out.duration_s = time.perf_counter() - start
        out.device = str(self.device)
        if self.device.type == "cpu" and torch.get_num_threads() > 1:     # not the default: say so (bench.runner)
            out.device = f"cpu ({torch.get_num_threads()} threads)"
        if self.device.type == "cuda":
            out.peak_mem_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:  # peak resident memory of this worker process so far (Linux reports KiB)
            out.peak_mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out

    # -- stages --------------------------------------------------------------------------------------------
    def run_generate(self, task: Task) -> Outcome:
        """Train an attack's trigger generator on the clean training set (``Attack.train_generator``)."""
        bundle = self.dataset(task.chain["dataset"])
        spec = dict(task.chain["generator"])
        entry = ATTACKS.get(spec.pop("name"))
        attack = entry.obj(entry.parse(spec), bundle.info(), task.chain["seed"])
        surrogate = self.model(task, "train", bundle) if attack.needs_clean_model else None
        seed_everything(task.chain["seed"])
        state, metrics = attack.train_generator(bundle.train, self.device, surrogate)
        return Outcome([self.store.put(task.key, "generator", state)],
                       [Metric(k, float(v), None, "generator") for k, v in metrics.items()])

    def run_poison(self, task: Task) -> Outcome:
        bundle = self.dataset(task.chain["dataset"])
        attack = self.attack(task, bundle)
        if task.chain.get("trigger_only"):      # a checkpoint cell: the trigger, for evaluation only
            return Outcome([self.store.put(task.key, "poison", trigger_only(attack, bundle.train).to_dict())])
        clean_model = self.model(task, "train", bundle) if attack.needs_clean_model else None
        gen = torch.Generator().manual_seed(stream_seed(task.chain["seed"], "poison"))   # not fit's shuffle stream
        poisoned = attack.poison(bundle.train, gen, clean_model=clean_model)
        rec = self.store.put(task.key, "poison", poisoned.to_dict())
        n = int(poisoned.params.get("poisoned", int((poisoned.kind != CLEAN).sum())))
        return Outcome([rec], [Metric("poisoned", float(n), int(poisoned.params.get("pool", 0)), "train"),
                               Metric("poison_fraction", n / len(bundle.train), len(bundle.train), "train")])

    def poisoned_train(self, task: Task, bundle: DataBundle) -> tuple[PoisonedSet, ImageSet]:
        poisoned = PoisonedSet.from_dict(self.load(task, "poison", "poison"))
        return poisoned, poisoned.apply(bundle.train)

    def run_train(self, task: Task) -> Outcome:
        bundle = self.dataset(task.chain["dataset"])
        if "checkpoint" in task.chain["model"]:    # a published model enters the graph as this stage's artifact
            model = load_checkpoint_model(task.chain["model"], bundle.info())
            return Outcome([self.put_model(task.key, model, task.chain["model"])])
        _, train = self.poisoned_train(task, bundle)
        seed_everything(task.chain["seed"])
        model = create_from_spec(task.chain["model"], bundle.info())
        model = fit(model, train, recipe_of(task.chain), device=self.device, seed=task.chain["seed"])
        return Outcome([self.put_model(task.key, model, task.chain["model"])])

    def defense_inputs(self, task: Task, spec: dict[str, Any]):
        """The defense built from ``spec`` and the context its cell hands it -> (defense, ctx, data)."""
        bundle = self.dataset(task.chain["dataset"])
        poisoned, train = self.poisoned_train(task, bundle)
        spec = dict(spec)
        entry = DEFENSES.get(spec.pop("name"))
        defense: Defense = entry.obj(entry.parse(spec))
        attack = self.attack(task, bundle, poisoned)
        ctx = self.context(task, defense, bundle, poisoned, train, attack, spec)
        return defense, ctx, (bundle, poisoned, train, attack)

    def run_prepare(self, task: Task) -> Outcome:
        """A defense's shared preparation (``Defense.prepare``), built from its ``prepare_fields`` alone."""
        defense, ctx, _ = self.defense_inputs(task, task.chain["prepare"])
        seed_everything(task.chain["seed"])
        state, metrics = defense.prepare(ctx)
        return Outcome([self.store.put(task.key, "prepared", state)],
                       [Metric(k, float(v), None, "prepare") for k, v in metrics.items()])

    def run_defend(self, task: Task) -> Outcome:
        chain, seed = task.chain, task.chain["seed"]
        defense, ctx, (bundle, poisoned, train, attack) = self.defense_inputs(task, chain["defense"])
        if "prepare" in task.lineage:
            ctx.prepared = self.load(task, "prepare", "prepared")
        seed_everything(seed)
        result: DefenseResult = defense.run(ctx)
        out = Outcome(curves=ctx.curves.rows)
        if result.model is None and defense.paradigm == "cleansing":
            result.model = self.retrain_kept(ctx, train, result)
        if result.model is None:
            raise RuntimeError(f"defense '{chain['defense']['name']}' returned no model")
        out.artifacts.append(self.put_model(task.key, result.model, chain["model"]))
        if result.scores is not None or result.flags is not None or result.trusted is not None:
            out.artifacts.append(self.store.put(task.key, "scores", {
                "scores": result.scores, "flags": result.flags, "relabels": result.relabels,
                "trusted": result.trusted}))
            out.metrics += detection_metrics(poisoned.kind, result.flags, result.scores, result.trusted)
        out.metrics += cleansing_report(defense, result, poisoned, train, bundle, attack)
        out.metrics += [Metric(k, float(v), None, "defense") for k, v in result.metrics.items()]
        return out

    def context(self, task: Task, defense: Defense, bundle: DataBundle, poisoned: PoisonedSet, train: ImageSet,
                attack: Attack, spec: dict[str, Any]) -> DefenseContext:
        model = self.model(task, "train", bundle) if defense.reads_backdoored_model(spec) else None
        return build_context(defense, task.chain, bundle, poisoned, train, attack, self.device, model)

    def retrain_kept(self, ctx: DefenseContext, train: ImageSet, result: DefenseResult) -> torch.nn.Module:
        """The cleansing paradigm's second half: train a fresh model on the kept (and relabelled) samples."""
        labels = train.labels.clone()
        if result.relabels is not None:
            relabel = result.relabels >= 0
            labels[relabel] = result.relabels[relabel]
        keep = torch.ones(len(train), dtype=torch.bool) if result.flags is None else ~result.flags.cpu().bool()
        if result.relabels is not None:
            keep |= result.relabels.cpu() >= 0
        seed_everything(ctx.seed)
        return fit(ctx.new_model(), ImageSet(train.images[keep], labels[keep]), ctx.recipe, device=ctx.device,
                   seed=ctx.seed)

    def run_evaluate(self, task: Task) -> Outcome:
        bundle = self.dataset(task.chain["dataset"])
        poisoned = PoisonedSet.from_dict(self.load(task, "poison", "poison"))
        attack = self.attack(task, bundle, poisoned)
        model = self.model(task, "defend", bundle)
        return Outcome(metrics=backdoor_metrics(model, bundle.test, attack, self.device))


def build_context(defense: Defense, chain: dict[str, Any], bundle: DataBundle, poisoned: PoisonedSet,
                  train: ImageSet, attack: Attack, device: torch.device,
                  backdoored: torch.nn.Module | None) -> DefenseContext:
    """The inputs a defense declared in ``needs`` (and nothing else), as the runner hands them over.

    ``chain`` holds the cell's resolved configs: model, recipe, seed, clean_ratio, clean_stratified, curves.
    """
    needs, seed, info = defense.needs, chain["seed"], bundle.info()

    def new_model() -> torch.nn.Module:
        return create_from_spec(chain["model"], info).to(device)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return {m.name: m.value for m in backdoor_metrics(model, bundle.test, attack, device)}

    # A checkpoint cell has no recipe in its chain; only training-time defenses read it, and those are refused.
    recipe = recipe_of(chain) if "recipe" in chain else Recipe()
    ctx = DefenseContext(info=info, device=device, seed=seed, recipe=recipe, new_model=new_model,
                         curves=Curves(bool(chain.get("curves"))), evaluate=evaluate)
    if "backdoored_model" in needs:
        ctx.model = backdoored
    if "clean_subset" in needs:
        split = clean_subset(bundle.train.labels, poisoned.kind != CLEAN, chain["clean_ratio"], seed,
                             chain.get("clean_stratified", False), val_every=10 if defense.uses_clean_val else 0)
        ctx.clean = bundle.train.subset(split.fit)
        ctx.clean_val = bundle.train.subset(split.val) if len(split.val) else None
    if "poisoned_train" in needs:
        ctx.train = train
    if "true_trigger" in needs:
        ctx.true_trigger = attack.true_trigger()
    return ctx


def trigger_only(attack: Attack, train: ImageSet) -> PoisonedSet:
    """The poison artifact of a checkpoint cell: the clean training set unchanged (every sample CLEAN, so the
    defender's clean subset may come from all of it) and the attack's state, from which its trigger is rebuilt."""
    c, h, w = train.images.shape[1:]
    return PoisonedSet(train.labels.clone(), torch.zeros(len(train), dtype=torch.int8),
                       torch.zeros(0, dtype=torch.long), torch.zeros(0, c, h, w, dtype=torch.uint8),
                       {"trigger_only": True, "poisoned": 0}, attack.state())


def recipe_of(chain: dict[str, Any]) -> Recipe:
    opts = dict(chain["recipe"])
    opts.pop("name", None)
    return Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()})


def cleansing_report(defense: Defense, result: DefenseResult, poisoned: PoisonedSet, train: ImageSet,
                     bundle: DataBundle, attack: Attack) -> list[Metric]:
    """Per-class kept rates of a cleansing defense, relabelling outcomes, and its encoder's kNN health check."""
    info, out = bundle.info(), []
    if defense.paradigm == "cleansing" and result.flags is not None:
        target = attack.cfg.target if attack.cfg.label_mode == "all2one" else None
        out += cleansing_metrics(poisoned.kind, train.labels, result.flags, result.relabels, target,
                                 info.num_classes)
    if result.relabels is not None:
        out += relabel_metrics(poisoned.kind, bundle.train.labels, result.relabels)
    if result.embedding is not None:
        k = int(result.metrics.get("k", 0)) or max(1, round(len(train) / info.num_classes / 2))
        out.append(knn_health(result.embedding, bundle.train.labels, k, info.num_classes))
    return out
