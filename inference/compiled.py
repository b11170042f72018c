"""The network compiled with ``torch.compile`` (inductor) for fast CPU inference.

Eager PyTorch spends much of a batch-1 forward in Python calls and in separate passes of the
pointwise ops between convolutions; inductor fuses them and freezes the weights into the
kernels (the shipped ensemble on a 2-core CPU: about 1.7x at batch 1 and 2.4x at batch 8, see
MODEL_CARD.md "Speed"). Shapes are static, because inductor's dynamic-shape path fails on these
channels-last oneDNN convolutions (torch 2.13), so only two batch sizes are compiled: 1 and
``full_batch``; other batches run as single images or padded to ``full_batch`` (every image's
result is independent of its batch: batch norms are folded). Each compiled shape costs tens of
seconds once, so :meth:`CompiledForward.warm_up` compiles both at start-up.

A compiled result is checked against the eager network at warm-up, and any compile or run
error switches this process to the eager network, logged once: a missing C++ compiler or an
inductor bug must cost speed, never a result.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

COMPILE_MODES: tuple[str, ...] = ("auto", "on", "off")
# Largest difference allowed between compiled and eager outputs at warm-up, in probability
# units (lesion probabilities and softmax class probabilities). Both run in the same
# arithmetic; bfloat16 rounding differs with the order of fused operations, which measured
# under 0.02 on validation images (MODEL_CARD.md); a wrong kernel gives differences near 1.
MAX_WARM_UP_DIFFERENCE = 0.05

Outputs = tuple[torch.Tensor, torch.Tensor]


def cxx_compiler() -> str | None:
    """Path of the C++ compiler inductor would use on CPU (``$CXX``, g++, c++ or clang++)."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def resolve_compile(mode: str, device: str) -> bool:
    """Whether to compile for ``mode`` (one of :data:`COMPILE_MODES`) on ``device``.

    ``auto`` compiles on CPU when a C++ compiler is installed (the CUDA path is not measured
    here, so it stays eager unless asked); ``on`` compiles anywhere; ``off`` never.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "off":
        return False
    if mode == "on":
        return True
    return torch.device(device).type == "cpu" and cxx_compiler() is not None


class CompiledForward:
    """Call like the eager network: ``(x (B, 1, S, S) float32) -> (seg logits, class logits)``,
    both float32.

    Parameters
    ----------
    net : nn.Module
        The eager network, in eval mode with batch norms folded; kept as the fallback.
    dtype : torch.dtype
        ``torch.bfloat16`` or ``torch.float32``: the compiled copy holds its weights in it.
        The fallback runs the eager network under autocast to the same dtype.
    device : str
        Where ``net`` lives.
    full_batch : int
        The larger compiled batch size (the model's batch size).
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype, device: str,
                 full_batch: int = 8) -> None:
        if net.training:
            raise ValueError("CompiledForward needs a network in eval mode")
        if full_batch < 2:
            raise ValueError(f"full_batch must be >= 2, got {full_batch}")
        self._eager = net
        self._dtype = dtype
        self._device_type = torch.device(device).type
        self.full_batch = full_batch
        self.error: str | None = None
        self._compiled: Callable[[torch.Tensor], Outputs] | None = torch.compile(
            copy.deepcopy(net).to(dtype), dynamic=False, options={"freezing": True}
        )

    @property
    def active(self) -> bool:
        """True while the compiled network is in use (False after a fallback)."""
        return self._compiled is not None

    def eager(self, x: torch.Tensor) -> Outputs:
        """The eager network's float32 outputs (the reference and the fallback)."""
        with torch.no_grad(), torch.autocast(device_type=self._device_type, dtype=torch.bfloat16,
                                             enabled=self._dtype == torch.bfloat16):
            seg, cls = self._eager(x)
        return seg.float(), cls.float()

    def __call__(self, x: torch.Tensor) -> Outputs:
        if self._compiled is None:
            return self.eager(x)
        try:
            return self._batched(x)
        except Exception as exc:  # noqa: BLE001 - any inductor failure: run eager from now on
            self._fall_back(exc)
            return self.eager(x)

    def warm_up(self, image_size: int) -> float:
        """Compile both batch sizes and compare them with the eager network; returns seconds.

        After a failure or a mismatch the eager network is used (see :attr:`error`).
        """
        t0 = time.perf_counter()
        if self._compiled is None:
            return 0.0
        x = _warm_up_images(self.full_batch, image_size).to(next(self._eager.parameters()).device)
        try:
            for batch in (x[:1], x):
                got, want = self._batched(batch), self.eager(batch)
                diff = max(_probability_difference(got, want))
                if not diff <= MAX_WARM_UP_DIFFERENCE:
                    raise RuntimeError(f"compiled outputs differ from eager by {diff:.3f} "
                                       f"(batch {batch.shape[0]}, allowed "
                                       f"{MAX_WARM_UP_DIFFERENCE})")
        except Exception as exc:  # noqa: BLE001
            self._fall_back(exc)
        return time.perf_counter() - t0

    def _batched(self, x: torch.Tensor) -> Outputs:
        """Run ``x`` through the two compiled shapes only (split, or pad with zero images)."""
        n, full = int(x.shape[0]), self.full_batch
        if n in (1, full):
            return self._run(x)
        if n > full:
            parts = [self._batched(x[i : i + full]) for i in range(0, n, full)]
        elif 2 * n < full:
            parts = [self._run(x[i : i + 1]) for i in range(n)]
        else:
            pad = x.new_zeros((full - n, *x.shape[1:]))
            seg, cls = self._run(torch.cat([x, pad]))
            return seg[:n], cls[:n]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _run(self, x: torch.Tensor) -> Outputs:
        assert self._compiled is not None
        # One memory format and dtype, so the compiled guards never see a new input layout.
        x = x.to(self._dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            seg, cls = self._compiled(x)
        return seg.float(), cls.float()

    def _fall_back(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        self._compiled = None
        log.warning("compiled network unavailable, running eager (slower): %s", self.error)


def _warm_up_images(n: int, size: int) -> torch.Tensor:
    """Smooth synthetic B-mode-like images (a dark oval in speckle), normalised like inputs.

    Plain noise would sit far from the training images; a smooth blob gives the network
    confident outputs, so a real kernel error shows as a large difference.
    """
    from inference.transforms import normalise

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    images = []
    for i in range(n):
        cy, cx, r = 0.3 * (i % 3 - 1), 0.2 * (i % 2), 0.25 + 0.05 * (i % 4)
        lesion = (((yy - cy) / r) ** 2 + ((xx - cx) / (1.4 * r)) ** 2) < 1
        speckle = 0.45 + 0.15 * torch.rand(size, size, generator=g)
        images.append(torch.where(lesion, 0.1 * speckle, speckle))
    x = torch.stack(images)[:, None].float()
    return normalise(x).contiguous(memory_format=torch.channels_last)


def _probability_difference(got: Outputs, want: Outputs) -> tuple[float, float]:
    """Largest absolute differences of lesion probabilities and of class probabilities."""
    seg = (torch.sigmoid(got[0]) - torch.sigmoid(want[0])).abs().max().item()
    cls = (torch.softmax(got[1], dim=1) - torch.softmax(want[1], dim=1)).abs().max().item()
    return float(seg), float(cls)
