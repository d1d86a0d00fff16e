"""Evaluation metrics, as ../shared/DESIGN.md defines them. Rates in [0, 1]; every rate has its count.

BA: accuracy on the clean test set.  ASR: triggered test images (non-target ones for all2one; all of them with
target (y+1) mod C for all2all) classified as the attack's target.  RA: the same triggered images classified as
their true label.  Detection (any defense that flags training samples): precision and recall of the flagged
set against the poisoned ground truth, precision of the kept set (fraction truly clean), AUROC of the score.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.attack import CLEAN, POISONED, Attack
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
        out.append(below_clean_mean(scores, poisoned))
    return out


def below_clean_mean(scores: torch.Tensor, poisoned: torch.Tensor) -> Metric:
    """``poison_below_clean_mean``: the share of poisoned samples scored less suspicious than the clean samples'
    mean score (n = the poisoned count).  With LfD's score (-loss) it is LfD Fig. 2's count as a rate: poisoned
    samples whose loss exceeds the average loss of the clean data."""
    scores, poisoned = scores.double().cpu(), poisoned.bool().cpu()
    n = int(poisoned.sum())
    if n == 0 or n == len(poisoned):
        return Metric("poison_below_clean_mean", float("nan"), n, "train")
    return Metric("poison_below_clean_mean", float((scores[poisoned] < scores[~poisoned].mean()).sum()) / n, n,
                  "train")


# ---------------------------------------------------------------------------------------------------------
# Cleansing: what the retrained model learns from, per class, and what relabelling did (seed 002 §3.4)
# ---------------------------------------------------------------------------------------------------------


def _rate(hits: torch.Tensor, of: torch.Tensor) -> tuple[float, int]:
    n = int(of.sum())
    return (int((hits & of).sum()) / n if n else float("nan")), n


def cleansing_metrics(kind: torch.Tensor, given: torch.Tensor, flags: torch.Tensor,
                      relabels: torch.Tensor | None, target: int | None, num_classes: int) -> list[Metric]:
    """Kept rates of a cleansing defense, so that "no poison kept" bought by deleting a whole class shows.

    ``given``: the training labels as the defender saw them (poisoned labels included).  A sample is *kept* when
    not flagged (seed 002 Table 1's "remaining after filtering"): ``clean_kept_rate``, ``poison_kept_rate``, and per
    class c (by label, clean samples only) ``clean_kept_class{c}``, the target class first and also stored as
    ``clean_kept_target``.  ``poison_trained_as_target``: poisoned samples the retrained model still learns with
    the attack's label - kept, or relabelled to that label - out of all poisoned ones.
    """
    kind, given, flags = kind.cpu(), given.cpu(), flags.cpu().bool()
    poisoned, clean, kept = kind == POISONED, kind == CLEAN, ~flags
    final, trained = given.clone(), kept.clone()
    if relabels is not None:
        moved = relabels.cpu() >= 0
        final[moved] = relabels.cpu()[moved]
        trained |= moved
    out = [Metric("clean_kept_rate", *_rate(kept, clean), "train"),
           Metric("poison_kept_rate", *_rate(kept, poisoned), "train"),
           Metric("poison_trained_as_target", *_rate(trained & (final == given), poisoned), "train")]
    classes = list(range(num_classes))
    if target is not None:
        classes.remove(target)
        out.append(Metric("clean_kept_target", *_rate(kept, clean & (given == target)), f"class_{target}"))
        classes.insert(0, target)
    out += [Metric(f"clean_kept_class{c}", *_rate(kept, clean & (given == c)), f"class_{c}") for c in classes]
    return out


def relabel_metrics(kind: torch.Tensor, true_labels: torch.Tensor, relabels: torch.Tensor) -> list[Metric]:
    """What relabelling did, judged separately for the two kinds of sample it touches.

    A relabelled poisoned sample is a recovery when its new label is its source (true) class; a relabelled clean
    sample gets a wrong label whatever the defense does (it was rejected because its decision disagreed with its
    correct label), so it is counted as label noise, not as a failure of the source recovery.
        relabel_poison_share      poisoned share of the relabelled set (count: |relabelled|)
        relabel_source_recovery   relabelled poisons given their true class (count: |relabelled poisons|)
        n_relabelled_clean        relabelled clean samples (label noise added)
    """
    kind, true_labels, relabels = kind.cpu(), true_labels.cpu(), relabels.cpu()
    moved = relabels >= 0
    poisoned = kind == POISONED
    n, n_pois = int(moved.sum()), int((moved & poisoned).sum())
    return [Metric("n_relabelled", float(n), n, "train"),
            Metric("relabel_poison_share", n_pois / n if n else float("nan"), n, "train"),
            Metric("relabel_source_recovery", *_rate(relabels == true_labels, moved & poisoned), "train"),
            Metric("n_relabelled_clean", float(n - n_pois), n - n_pois, "train")]


def knn_votes(z: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int, chunk: int = 512) -> torch.Tensor:
    """Votes (float [N, C], on ``z``'s device) of each sample's k nearest *other* samples by the dot product of
    the L2-normalised rows of ``z`` (cosine similarity), each neighbour voting for its label."""
    labels = labels.to(z.device)
    k = min(k, len(z) - 1)
    out = []
    for s in range(0, len(z), chunk):
        rows = torch.arange(s, min(s + chunk, len(z)), device=z.device)
        sim = z[rows] @ z.t()
        sim[torch.arange(len(rows), device=z.device), rows] = float("-inf")   # not its own neighbour
        nbr = sim.topk(k, dim=1).indices
        out.append(torch.zeros(len(rows), num_classes, device=z.device).scatter_add_(
            1, labels[nbr], torch.ones(nbr.shape, device=z.device)))
    return torch.cat(out)


def knn_health(z: torch.Tensor, true_labels: torch.Tensor, k: int, num_classes: int) -> Metric:
    """kNN accuracy of an embedding on the *true* labels (every sample voted on by its k nearest others): how
    well the representation a cleansing defense filters in separates the classes, whatever the poisoned labels."""
    pred = knn_votes(z, true_labels, k, num_classes).argmax(1).cpu()
    return Metric("encoder_knn_acc", float((pred == true_labels.cpu()).double().mean()), len(pred), "train")
