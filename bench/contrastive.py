"""Contrastive objectives shared by SimCLR-style methods (seed 002 Eq. 5, D-ST's SS-CTL, DBD's extractor).

``supcon``: Khosla et al. (2020) supervised contrastive loss (Eq. 2, "L_out") as the reference implementation
computes it (HobbitLong/SupContrast ``losses.py`` ``SupConLoss``, which D-ST's ``ST/losses.py`` copies): every
one of the 2N views is an anchor, its positives are the other view of its image plus (with ``labels``) every
other view of the same label; the loss is the mean over anchors of minus the mean log-probability of the
positives, **multiplied by temperature / base_temperature** (``losses.py`` l. 103, base_temperature 0.07).  The
factor is part of what the cited learning rates were tuned with (1.43 at tau 0.1, 7.14 at tau 0.5); pass
``base_temperature=None`` for the bare NT-Xent.  A label of -1 marks a sample whose only positive is its own
other view (D-ST's treatment of suspicious samples, seed 001 Eq. 2).
``nt_xent``: SimCLR's normalised-temperature cross entropy (Chen et al., 2020, Eq. 1) = ``supcon`` without
labels (SupContrast's ``--method SimCLR``, the same scale factor).
The similarity matrix and the softmax are computed in fp32 with autocast off (a bf16 1/tau-scaled logit at
tau 0.1 has a resolution of ~0.06, enough to reorder near-tied negatives).
``ProjectionHead``: the MLP projector (dim -> dim -> out) whose L2-normalised output the losses compare.
``two_view_loss``: the ``fit`` loss of every SimCLR-style stage: two random views of the batch, encoded in one
forward pass (``joint=True``, the default: SupContrast ``main_supcon.py`` l. 209 and DBD concatenate the views,
so BatchNorm normalises over all 2N), compared.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.augment import simclr_views

BASE_TEMPERATURE = 0.07     # SupContrast losses.py: SupConLoss(base_temperature=0.07)


class ProjectionHead(nn.Module):
    def __init__(self, dim_in: int, dim_out: int = 128, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim_in
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(f), dim=1)


def supcon(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor | None, temperature: float,
           base_temperature: float | None = BASE_TEMPERATURE) -> torch.Tensor:
    """Supervised contrastive loss over the 2N L2-normalised views ``z1``, ``z2`` [N, D] (see the module doc).

    Positives of an anchor: its other view, plus (when ``labels`` is given) every other view whose label equals
    its own and is >= 0.  ``labels=None`` gives SimCLR's NT-Xent.  Scaled by ``temperature / base_temperature``
    (None: unscaled).
    """
    with torch.autocast(z1.device.type, enabled=False):
        z = torch.cat([z1, z2]).float()
        n2 = z.shape[0]
        logits = z @ z.t() / temperature
        self_mask = torch.eye(n2, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        idx = torch.arange(n2, device=z.device)
        pos = torch.zeros(n2, n2, dtype=torch.bool, device=z.device)
        pos[idx, (idx + n2 // 2) % n2] = True                    # the other view of the same image
        if labels is not None:
            lab = torch.cat([labels, labels]).to(z.device)
            same = (lab[:, None] == lab[None, :]) & (lab[:, None] >= 0)
            pos |= same & ~self_mask
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        mean_pos = (log_prob.masked_fill(~pos, 0.0).sum(1)) / pos.sum(1)
        scale = 1.0 if base_temperature is None else temperature / base_temperature
        return -scale * mean_pos.mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
            base_temperature: float | None = BASE_TEMPERATURE) -> torch.Tensor:
    """SimCLR's NT-Xent loss (each anchor's single positive is its other view), SupContrast's scale."""
    return supcon(z1, z2, None, temperature, base_temperature)


def two_view_loss(criterion, generator: torch.Generator | None, encode=None, joint: bool = True):
    """A ``fit`` loss_fn: two SimCLR views of the (un-augmented) batch, encoded, then ``criterion(z1, z2, y, idx)``.

    ``encode(model, views)`` defaults to ``model(views)``; ``joint`` (default) encodes both views in one forward
    pass, so BatchNorm normalises over the 2N views together (SupContrast, DBD, D-ST's code); ``joint=False``
    runs one pass per view.
    """
    encode = encode or (lambda model, v: model(v))

    def loss_fn(model, x, y, idx):
        v1, v2 = simclr_views(x, generator)
        if joint:
            z = encode(model, torch.cat([v1, v2]))
            z1, z2 = z[:len(x)], z[len(x):]
        else:
            z1, z2 = encode(model, v1), encode(model, v2)
        return criterion(z1, z2, y, idx)
    return loss_fn
