"""Grad-CAM of the classification head, computed with ``monai.visualize.GradCAM``.

Shows the radiologist which region drove the class decision; it explains the classifier,
not the segmentation.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from monai.visualize import GradCAM
from torch import nn

from inference.networks import ClassLogits, EnsembleNets, cam_target_layer

# Expected with the layers below the target frozen (see _gradients_from): the target layer's
# input needs no gradient, and MONAI reads only the gradient at its output. Unfiltered, torch
# prints it to stderr on the first map, outside the service's JSON log.
warnings.filterwarnings("ignore", category=UserWarning,
                        message="Full backward hook is firing when gradients are computed with "
                        "respect to module outputs")


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


@contextmanager
def _monai_grad_cam(net: nn.Module, arch: str, layer: str) -> Iterator[GradCAM]:
    """A ``monai.visualize.GradCAM`` of ``net`` whose hooks are removed again afterwards.

    MONAI registers a forward and a backward hook on the target layer each time a GradCAM is
    built and keeps no handle to remove them: one GradCAM per prediction piled up a hook per
    image on the served network, so every later forward pass ran them all (slower and larger
    with each image). Nothing is kept on the network, so it can still be copied.
    """
    target = net.get_submodule(layer)
    forward_before, backward_before = set(target._forward_hooks), set(target._backward_hooks)
    try:
        yield GradCAM(ClassLogits(net), target_layers=cam_target_layer(arch),
                      postprocessing=_unit_range)
    finally:
        for key in set(target._forward_hooks) - forward_before:
            del target._forward_hooks[key]
        for key in set(target._backward_hooks) - backward_before:
            del target._backward_hooks[key]


@contextmanager
def _gradients_from(net: nn.Module, layer: str) -> Iterator[None]:
    """Record autograd only from ``layer`` on (its parameters and what follows).

    Grad-CAM needs the class score's gradient at the target layer's output, nothing below it:
    with the lower layers (and the segmenter) frozen, the backward pass stops at the target
    layer instead of running down to the first convolution. The maps are the same.
    """
    saved = [(p, p.requires_grad) for p in net.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        for p in net.get_submodule(layer).parameters():
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


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
    layer = cam_target_layer(arch).removeprefix("net.")  # ClassLogits names the network "net"
    out = torch.zeros((x.shape[0], 1, *x.shape[-2:]), dtype=torch.float32)
    # MONAI's class score indexes logits[:, idx]: with a per-image tensor it would mix classes
    # across the batch, so run one call per class present.
    with _monai_grad_cam(net, arch, layer) as cam, _gradients_from(net, layer):
        for c in torch.unique(class_idx).tolist():
            sel = (class_idx == c).nonzero().flatten()
            with torch.enable_grad():
                maps = cam(x[sel].detach().clone(), class_idx=int(c))
            out[sel] = torch.as_tensor(maps, dtype=torch.float32).reshape(len(sel), 1,
                                                                          *x.shape[-2:])
    net.zero_grad(set_to_none=True)
    out = torch.nan_to_num(out, nan=0.0).clamp_(0.0, 1.0)
    return out[:, 0].detach().cpu().numpy().astype(np.float32)
