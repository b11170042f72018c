"""Grad-CAM of the classification head, computed with ``monai.visualize.GradCAM``.

Shows the radiologist which region drove the class decision; it explains the classifier,
not the segmentation.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.visualize import GradCAM
from torch import nn

from inference.networks import ClassLogits, EnsembleNets, cam_target_layer


def _unit_range(cams: torch.Tensor) -> torch.Tensor:
    """Scale each map of (B, 1, H, W) to 0..1 with the strongest evidence at 1 (zeros stay 0).

    MONAI's default normaliser maps the maximum to 0; we want high = important.
    """
    flat = cams.reshape(len(cams), -1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = (hi - lo).clamp_min(1e-12)
    out = (cams - lo) / span
    return torch.where(hi > lo, out, torch.zeros_like(out))


def grad_cam(
    net: nn.Module, x: torch.Tensor, arch: str, class_idx: torch.Tensor | None = None
) -> np.ndarray:
    """Grad-CAM maps for a normalised batch.

    Parameters
    ----------
    net : nn.Module
        A two-output network from :mod:`inference.networks`.
    x : (B, 1, S, S) float tensor
        Network input, already normalised.
    arch : str
        Architecture name, selecting the target layer.
    class_idx : (B,) long tensor, optional
        Class per image; default the predicted (argmax) class.

    Returns
    -------
    (B, S, S) float32 in 0..1.

    For an :class:`EnsembleNets` the map is the mean of the members' maps. The ensemble's logit
    is the mean of the members', so its gradient at a member's layer is that member's own
    gradient halved, which the unit-range scaling cancels: each member's map of its own score is
    exactly its map of the ensemble's score, at the cost of one backward pass per member.
    """
    if class_idx is None:
        with torch.no_grad():
            net.eval()
            class_idx = net(x)[1].argmax(dim=1)
    if isinstance(net, EnsembleNets):
        maps = [grad_cam(m, x, arch, class_idx) for m in net.members]
        return (np.mean(maps, axis=0)).astype(np.float32)
    cam = GradCAM(ClassLogits(net), target_layers=cam_target_layer(arch),
                  postprocessing=_unit_range)
    out = torch.zeros((x.shape[0], 1, *x.shape[-2:]), dtype=torch.float32)
    # MONAI's class score indexes logits[:, idx]: with a per-image tensor it would mix classes
    # across the batch, so run one call per class present.
    for c in torch.unique(class_idx).tolist():
        sel = (class_idx == c).nonzero().flatten()
        with torch.enable_grad():
            maps = cam(x[sel].detach().clone().requires_grad_(True), class_idx=int(c))
        out[sel] = torch.as_tensor(maps, dtype=torch.float32).reshape(len(sel), 1, *x.shape[-2:])
    net.zero_grad(set_to_none=True)
    out = torch.nan_to_num(out, nan=0.0).clamp_(0.0, 1.0)
    return out[:, 0].detach().cpu().numpy().astype(np.float32)
