"""Knowledge distillation: a bundled model (typically an ensemble) as the teacher of one network.

An ensemble of several networks is more accurate than each member but costs each member's time
again at inference. Training one network on the ensemble's soft outputs (lesion probability
maps and class logits) as well as on the labels aims at most of the ensemble's accuracy for
one network's cost. The teacher's outputs are computed once on the un-augmented training
images and cached; the lesion maps then go through the same spatial augmentation as the masks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from inference.data import split_key


def teacher_targets(teacher: Path, train_config: dict, images: np.ndarray, image_size: int,
                    cache_dir: Path) -> dict[str, np.ndarray]:
    """The teacher's lesion probabilities and class logits for each training image.

    Parameters
    ----------
    teacher : Path
        Bundled weights (``model.pt`` with ``model.json``), one network or an ensemble.
    train_config : dict
        The student's configuration (:meth:`TrainConfig.to_json`): the teacher must have been
        trained on the same validation split, or its targets would carry validation images
        into the student's training.
    images : (N, S, S) uint8
        The student's training images (the array cache).
    image_size : int
        The student's grid; the teacher must run on the same one.
    cache_dir : Path
        Where ``teacher_<hash>.npz`` is kept, so a resumed run does not recompute it.

    Returns
    -------
    dict
        ``prob`` (N, S, S) uint8 (probability x 255) and ``logits`` (N, 3) float32 (raw, before
        the teacher's temperature), computed with the teacher's own flip TTA setting.
    """
    from inference.model import Model, predict_arrays

    model = Model.load(Path(teacher), device="cpu", precision="auto")
    if model.image_size != image_size:
        raise ValueError(f"teacher {teacher} runs at {model.image_size} px, the student at "
                         f"{image_size} px: use --image-size {model.image_size}")
    if split_key(model.meta["train_config"]) != split_key(train_config):
        raise ValueError(f"teacher {teacher} was trained on another validation split than this "
                         "run (data folders, fraction or split seed differ): its targets would "
                         "leak validation images into training")
    key = hashlib.sha256(f"{model.version} {image_size} ".encode()
                         + images.tobytes()).hexdigest()[:16]
    cache = Path(cache_dir) / f"teacher_{key}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.precision == "bfloat16"):
        prob, logits = predict_arrays(model.net, images,
                                      flip_tta=bool(model.postprocess["flip_tta"]))
    out = {"prob": np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8),
           "logits": logits.astype(np.float32)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **out)
    os.replace(tmp, cache)
    return out


def distill_seg_loss(seg_logits: torch.Tensor, teacher_prob: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the student's lesion logits against the teacher's probabilities."""
    return F.binary_cross_entropy_with_logits(seg_logits.float(), teacher_prob.float())


def distill_class_loss(class_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """KL divergence of softened class distributions, scaled by T² (Hinton et al. 2015) so its
    gradient keeps the size of the label loss's whatever the temperature."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(class_logits.float() / t, dim=1),
                    F.softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean") * t * t
