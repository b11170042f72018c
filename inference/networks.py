"""Networks: a lightweight multitask U-Net (shared encoder), two separate networks, a cascade
(classifier reads the segmenter's lesion map), and an ensemble of several trained ones.

All return ``(seg_logits (B, 1, S, S), class_logits (B, 3))`` so training, evaluation and
serving do not care which architecture is inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import UNet
from monai.networks.nets.resnet import ResNet
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

ARCHS: tuple[str, ...] = ("multitask", "separate", "cascade")


class MultiTaskUNet(nn.Module):
    """Shared residual encoder, a U-Net segmentation decoder and a classification head.

    EFSNet-like: the classifier reads the bottleneck (global average + max pooling), so the
    encoder learns lesion features from both the masks and the labels, at the cost of one
    encoder pass. The target layer for Grad-CAM is ``bottleneck``.

    Parameters
    ----------
    in_channels : int
        1 for grayscale B-mode.
    num_classes : int
        Classifier outputs (normal, benign, malignant).
    channels : sequence of int
        Feature widths from full resolution down to the bottleneck; each level halves the size.
    dropout : float
        Dropout before the classifier's linear layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        ch = list(channels)
        if len(ch) < 2:
            raise ValueError("channels needs at least two levels")
        norm = "BATCH"
        # Downsample from the first block (as MONAI's UNet does): full-resolution convolutions
        # dominate CPU time, so only the last transposed convolution works at full size.
        widths = [in_channels, *ch[:-1]]
        self.down = nn.ModuleList(
            ResidualUnit(2, widths[i], widths[i + 1], strides=2, subunits=2, norm=norm)
            for i in range(len(ch) - 1)
        )
        self.bottleneck = ResidualUnit(2, ch[-2], ch[-1], strides=1, subunits=2, norm=norm)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        incoming = ch[-1]
        for i in range(len(ch) - 2, -1, -1):
            out = ch[i - 1] if i > 0 else ch[0]
            self.up.append(
                Convolution(2, incoming + ch[i], out, strides=2, is_transposed=True, norm=norm)
            )
            self.dec.append(
                ResidualUnit(2, out, out, subunits=1, norm=norm) if i > 0 else nn.Identity()
            )
            incoming = out
        self.seg_head = nn.Conv2d(ch[0], 1, kernel_size=1)
        self.cls_head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * ch[-1], 128), nn.PReLU(), nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (seg logits (B, 1, H, W), class logits (B, num_classes)); H, W divisible by 16."""
        skips = []
        h = x
        for block in self.down:
            h = block(h)
            skips.append(h)
        h = self.bottleneck(h)
        pooled = torch.cat([h.mean(dim=(-2, -1)), h.amax(dim=(-2, -1))], dim=1)
        logits = self.cls_head(pooled)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            h = dec(up(torch.cat([h, skip], dim=1)))
        return self.seg_head(h), logits


def _segmenter(in_channels: int) -> UNet:
    """The MONAI UNet of ``separate`` and ``cascade`` (1.63 M parameters, 16-256 wide)."""
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=1,
                channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2,
                norm="BATCH")


def _classifier(in_channels: int, num_classes: int) -> ResNet:
    """The small MONAI ResNet of ``separate`` and ``cascade`` (basic blocks 1-1-1-1)."""
    return ResNet(block="basic", layers=(1, 1, 1, 1), block_inplanes=(32, 64, 128, 256),
                  spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes)


class SeparateNets(nn.Module):
    """Two independent networks: a MONAI ``UNet`` for the mask and a small MONAI ``ResNet``.

    The comparison baseline for :class:`MultiTaskUNet`: twice the encoder compute, no
    shared features. Grad-CAM target layer: ``classifier.layer4``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        self.segmenter = _segmenter(in_channels)
        self.classifier = _classifier(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (seg logits (B, 1, H, W), class logits (B, num_classes))."""
        return self.segmenter(x), self.classifier(x)


class CascadeNets(nn.Module):
    """A MONAI ``UNet`` for the mask, then a small MONAI ``ResNet`` that reads the image *and*
    the predicted lesion probability (2 channels).

    The classifier is told where the lesion is, so its features come from the lesion and its
    margin rather than the whole field; the mask channel is detached, so the class loss never
    bends the segmenter. Grad-CAM target layer: ``classifier.layer4``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        self.segmenter = _segmenter(in_channels)
        self.classifier = _classifier(in_channels + 1, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (seg logits (B, 1, H, W), class logits (B, num_classes))."""
        seg = self.segmenter(x)
        lesion = torch.sigmoid(seg.detach()).to(x.dtype)
        return seg, self.classifier(torch.cat([x, lesion], dim=1))


class ClassLogits(nn.Module):
    """Expose only the class logits of a two-output network for ``monai.visualize.GradCAM``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits (B, num_classes)."""
        return self.net(x)[1]


class EnsembleNets(nn.Module):
    """Mean of the outputs of independently trained networks of one architecture.

    Averaging the logits of two seeds cancels part of each one's errors (a lesion one member
    misses, a normal one member calls benign); the temperature is then fitted on the mean.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the members' mean (seg logits (B, 1, H, W), class logits (B, num_classes))."""
        outs = [m(x) for m in self.members]
        seg = torch.stack([o[0] for o in outs]).mean(dim=0)
        return seg, torch.stack([o[1] for o in outs]).mean(dim=0)


def build_network(arch: str, num_classes: int = 3, members: int = 1) -> nn.Module:
    """Build the network named ``arch`` (one of :data:`ARCHS`); ``members > 1`` builds an
    :class:`EnsembleNets` of that many."""
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    if members > 1:
        return EnsembleNets([build_network(arch, num_classes) for _ in range(members)])
    if arch == "multitask":
        return MultiTaskUNet(num_classes=num_classes)
    if arch == "separate":
        return SeparateNets(num_classes=num_classes)
    if arch == "cascade":
        return CascadeNets(num_classes=num_classes)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def cam_target_layer(arch: str) -> str:
    """Name (inside :class:`ClassLogits`) of the layer whose activations Grad-CAM weighs."""
    return {"multitask": "net.bottleneck", "separate": "net.classifier.layer4",
            "cascade": "net.classifier.layer4"}[arch]


_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def fold_batch_norm(net: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into that convolution,
    in place, and replace the BatchNorm by ``nn.Identity``; returns how many were folded.

    In eval mode a BatchNorm is a fixed per-channel affine map, so folding it changes no
    output beyond float rounding, and saves one full pass over each feature map (the shipped
    ensemble runs about 1.2x faster at batch 1 on a 2-core CPU; see docs/experiments). The module
    tree keeps its names, so Grad-CAM's target layers and forward hooks still work. Pairs are
    found on a ``torch.fx`` trace: a BatchNorm is folded only when it is the sole reader of the
    convolution's output.
    Only for inference: the folded network must not be trained or saved as a checkpoint.
    """
    if net.training:
        raise ValueError("fold_batch_norm needs a network in eval mode (call net.eval() first)")
    graph = torch.fx.symbolic_trace(net).graph
    modules = dict(net.named_modules())
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (not isinstance(src, torch.fx.Node) or src.op != "call_module"
                or len(src.users) != 1 or not isinstance(modules.get(src.target), _CONVS)):
            continue
        conv, bn = modules[src.target], modules[node.target]
        if bn.running_mean is None or bn.running_var is None:
            continue
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                    bn.eps, bn.weight, bn.bias,
                                    transpose=isinstance(conv, nn.ConvTranspose2d))
        conv.weight, conv.bias = w, b
        parent, _, name = node.target.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, name, nn.Identity())
        folded += 1
    return folded
