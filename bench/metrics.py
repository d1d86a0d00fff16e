"""Evaluation metrics, as ../shared/DESIGN.md defines them. Rates in [0, 1]; every rate has its count.

BA: accuracy on the clean test set.  ASR: triggered test images (non-target ones for all2one; all of them with
target (y+1) mod C for all2all) classified as the attack's target.  RA: the same triggered images classified as
their true label.  Detection (any defense that flags training samples): precision and recall of the flagged
set against the poisoned ground truth, precision of the kept set (fraction truly clean), AUROC of the score.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.attack import POISONED, Attack
from bench.data.imageset import ImageSet
from bench.train import check_finite, predict


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    count: int | None = None           # the denominator (number of images or samples behind the rate)
    subset: str = ""                    # e.g. 'test', 'flagged'


def backdoor_metrics(model, test: ImageSet, attack: Attack, device=None) -> list[Metric]:
    """BA, ASR and RA in one pass over the clean and the triggered test tensors.

    Raises:
        Diverged: the model has a NaN or infinite weight (its predictions would be meaningless: a NaN network
            predicts class 0, which reads as 100 % ASR against target 0).
    """
    check_finite(model, "refusing to evaluate")
    pred = predict(model, test.images, device)
    ba = (pred == test.labels.cpu()).float()
    x_trig, y_target, keep = attack.stamp_test(test.images.cpu(), test.labels.cpu())
    pred_t = predict(model, x_trig[keep], device)
    n = int(keep.sum())
    asr = (pred_t == y_target[keep]).float().mean().item() if n else float("nan")
    ra = (pred_t == test.labels.cpu()[keep]).float().mean().item() if n else float("nan")
    return [Metric("ba", ba.mean().item(), len(ba), "test"), Metric("asr", asr, n, "test"),
            Metric("ra", ra, n, "test")]


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (higher = more suspicious) for the boolean ``positive``."""
    from sklearn.metrics import roc_auc_score

    positive = positive.bool().cpu().numpy()
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, scores.double().cpu().numpy()))


def detection_metrics(kind: torch.Tensor, flags: torch.Tensor | None, scores: torch.Tensor | None,
                      trusted: torch.Tensor | None = None) -> list[Metric]:
    """Flagged-set precision/recall, kept-set precision, AUROC and set sizes against ground truth ``kind``;
    with ``trusted`` (the subset a defense treats as clean), its precision = the fraction truly clean."""
    poisoned = kind.cpu() == POISONED
    out: list[Metric] = []
    if trusted is not None:
        trusted = trusted.cpu().bool()
        n_trust = int(trusted.sum())
        out += [Metric("trusted_precision", int((trusted & ~poisoned).sum()) / n_trust if n_trust else float("nan"),
                       n_trust, "train"),
                Metric("n_trusted", float(n_trust), n_trust, "train")]
    if flags is not None:
        flags = flags.cpu().bool()
        kept = ~flags
        tp = int((flags & poisoned).sum())
        n_flag, n_kept, n_pois = int(flags.sum()), int(kept.sum()), int(poisoned.sum())
        out += [Metric("flag_precision", tp / n_flag if n_flag else float("nan"), n_flag, "train"),
                Metric("flag_recall", tp / n_pois if n_pois else float("nan"), n_pois, "train"),
                Metric("kept_precision", int((kept & ~poisoned).sum()) / n_kept if n_kept else float("nan"),
                       n_kept, "train"),
                Metric("n_flagged", float(n_flag), n_flag, "train"),
                Metric("n_kept", float(n_kept), n_kept, "train")]
    if scores is not None:
        out.append(Metric("auroc", auroc(scores, poisoned), len(poisoned), "train"))
    return out
