"""The defense interface: one base class, three paradigms, and the context the runner hands a defense.

Paradigms (../shared/DESIGN.md):
    post_training   input: the backdoored model + the defender's data (a clean subset of the given ratio; D-BR
                    takes the poisoned training set instead).  Output: a purified model.
    training_time   input: the poisoned training set; trains from scratch with the cell's model and recipe.
                    The runner does not train a backdoored model for it.
    cleansing       input: the poisoned training set; output: per-sample scores/flags (and relabels).  If the
                    defense returns no model, the runner trains a fresh one on the kept samples (one mechanism,
                    in bench/stages.py, for every cleansing method).  A cleansing method that reads a classifier
                    trained on the poisoned set (AC, SS) declares ``backdoored_model`` and gets the train stage's
                    model, the one the cell without a defense trains, instead of training it again.
A defense declares what it ``needs``; the runner provides exactly that and nothing more.  Ground truth (which
samples are poisoned) is never in the context: detection metrics are computed by the runner afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Mapping, Optional

import torch
from torch import nn

from bench.attack import Trigger
from bench.data.imageset import DataInfo, ImageSet
from bench.recipes import Recipe

Paradigm = Literal["post_training", "training_time", "cleansing"]
NEEDS = frozenset({"backdoored_model", "clean_subset", "poisoned_train", "true_trigger"})


@dataclass(frozen=True)
class DefenseConfig:
    """Fields shared by every defense (each defense's Config subclasses this)."""


class Curves:
    """Per-epoch curves a defense records when the sweep asks for them (``curves: true``)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []

    def record(self, step: int, **values: float) -> None:
        if self.enabled:
            self.rows.append({"step": step, **{k: float(v) for k, v in values.items()}})


@dataclass
class DefenseContext:
    """What a defense may use. Fields it did not declare in ``needs`` are None.

    Attributes:
        info: dataset facts (classes, channels, size, mean/std).
        model: the backdoored model (post_training; a cleansing method that reads it), on ``device``, in eval mode.
        clean: the defender's clean subset (uint8 images + true labels), without its validation slice.
        clean_val: the held-out validation slice of the clean subset (for early stopping / thresholds); only for
            a defense with ``uses_clean_val`` (else None, and ``clean`` is the whole subset).
        train: the poisoned training set as the defender sees it (images + possibly wrong labels).
        true_trigger: the attack's own trigger (privileged knowledge, e.g. MCL(True)); marked in reports.
        recipe: the cell's training recipe; new_model(): a fresh model of the cell's architecture.
        evaluate(model) -> {"ba", "asr", ...}: test-set metrics, ONLY for recording curves, never for selection.
        prepared: the state ``Defense.prepare`` returned in the cell's cached ``prepare`` stage (a defense with
            ``prepare_fields``; None otherwise, and in a direct ``run`` call outside a sweep).
    """

    info: DataInfo
    device: torch.device
    seed: int
    recipe: Recipe
    new_model: Callable[[], nn.Module]
    curves: Curves
    model: Optional[nn.Module] = None
    clean: Optional[ImageSet] = None
    clean_val: Optional[ImageSet] = None
    train: Optional[ImageSet] = None
    true_trigger: Optional[Trigger] = None
    evaluate: Optional[Callable[[nn.Module], dict[str, float]]] = None
    prepared: Optional[dict[str, Any]] = None

    def generator(self, stream: str = "") -> torch.Generator:
        """A CPU generator seeded from (cell seed, stream name): independent, reproducible random streams."""
        import zlib

        return torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(stream.encode())) % 2**63)


@dataclass
class DefenseResult:
    """What a defense returns.

    Attributes:
        model: the purified / newly trained model (None for a cleansing defense that leaves training to the runner).
        scores: float [N_train] suspicion per training sample (higher = more likely poisoned).
        flags: bool [N_train], True = flagged as poisoned (removed before retraining).
        relabels: int64 [N_train], the new label per sample or -1 to keep its label.
        trusted: bool [N_train], True = the subset the defense trusts as clean and trains on with labels (D-BR /
            D-ST's D̂_c, DBD's high-credible half); the runner stores its precision (fraction truly clean).
        metrics: extra numbers to store (e.g. NC's anomaly index), name -> value.
        embedding: float [N_train, D], the representation a cleansing defense decided in (seed 002's SimCLR z);
            the runner stores its kNN accuracy on the true labels as a health check (``k`` from ``metrics``).
    """

    model: Optional[nn.Module] = None
    scores: Optional[torch.Tensor] = None
    flags: Optional[torch.Tensor] = None
    relabels: Optional[torch.Tensor] = None
    trusted: Optional[torch.Tensor] = None
    metrics: dict[str, float] = field(default_factory=dict)
    embedding: Optional[torch.Tensor] = None


class Defense:
    """Base class: set ``Config``, ``paradigm``, ``needs`` and implement ``run``."""

    Config: ClassVar[type] = DefenseConfig
    paradigm: ClassVar[Paradigm] = "post_training"
    needs: ClassVar[frozenset[str]] = frozenset()
    privileged: ClassVar[tuple[str, ...]] = ()     # knowledge a paper granted (e.g. "target class"), for reports
    # True: the runner holds out every 10th image of the clean subset as ``ctx.clean_val`` (thresholds, early
    # stopping, a stopping rule); False: the defense gets the whole clean subset and no validation slice.
    uses_clean_val: ClassVar[bool] = False
    # Config fields of a preparation that cells may share (seed 002's SimCLR embedding, trained once for its kNN,
    # Energy and kNN+Energy filters): non-empty -> the graph gives the defense a cached ``prepare`` stage keyed by
    # these fields, the cell's seed and model and the defend stage's parent (its data), and ``run`` finds what
    # ``prepare`` returned in ``ctx.prepared``.  Like an attack's ``generator_fields`` (bench/graph.py).
    prepare_fields: ClassVar[tuple[str, ...]] = ()
    name: ClassVar[str]
    version: ClassVar[int]

    def __init__(self, cfg: Any):
        unknown = set(self.needs) - NEEDS
        if unknown:
            raise ValueError(f"{type(self).__name__}.needs has unknown inputs {sorted(unknown)}; valid: {sorted(NEEDS)}")
        self.cfg = cfg

    @classmethod
    def reads_backdoored_model(cls, cfg: Mapping[str, Any]) -> bool:
        """Whether a cell with this resolved defense config is handed the cell's backdoored model (the train
        stage's, cached and shared with the cell without a defense).  A defense whose options ask for another
        model (AC's ``teacher_epochs``) says no here and trains that model itself."""
        return "backdoored_model" in cls.needs

    def uses_clean_subset(self) -> bool:
        return "clean_subset" in self.needs

    def run(self, ctx: DefenseContext) -> DefenseResult:
        raise NotImplementedError(f"{type(self).__name__}.run")

    def prepare(self, ctx: DefenseContext) -> tuple[dict[str, Any], dict[str, float]]:
        """The shared preparation of a defense with ``prepare_fields`` -> (its state: tensors, stored as the
        ``prepare`` job's artifact; its metrics).  It may read only ``prepare_fields`` of ``self.cfg``."""
        raise NotImplementedError(f"{type(self).__name__} declares prepare_fields but no prepare")

    def prepared(self, ctx: DefenseContext) -> dict[str, Any]:
        """``ctx.prepared`` when the runner loaded it from the cached stage, else ``prepare`` run here (a direct
        call outside a sweep)."""
        return ctx.prepared if ctx.prepared is not None else self.prepare(ctx)[0]


def top_flags(scores: torch.Tensor, k: int, largest: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Flags (bool [n]) of the ``k`` highest scores (the ``k`` lowest with ``largest=False``); k is clipped to
    [0, n].  The flagging step shared by the detectors that remove or isolate a fixed count (SS, ABL, DBD).

    Ties at the cut are broken by a random permutation drawn from ``generator`` (pass the cell's, e.g.
    ``ctx.generator("ss.ties")``; None: a fixed seed), never by index: training sets are stored in class order,
    so an index order would fill the cut class by class.
    """
    return torch.zeros(len(scores), dtype=torch.bool).index_fill_(
        0, seeded_order(scores, largest, generator)[:max(0, min(k, len(scores)))], True)


def seeded_order(scores: torch.Tensor, descending: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices that sort ``scores`` (a CPU tensor), equal scores in a seeded random order instead of by index."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    perm = torch.randperm(len(scores), generator=gen)
    return perm[torch.argsort(scores.cpu()[perm], descending=descending, stable=True)]
