"""Agreement of :mod:`inference.descriptors` with a radiologist (BrEaST-Lesions_USG layout).

``wecare evaluate-descriptors DATA_DIR`` runs :func:`evaluate_descriptors`: features from the
radiologist's masks and from the bundled model's masks, thresholds chosen by k-fold
cross-validation (on the training folds' radiologist-mask features only), agreement on the
held-out folds: accuracy and Cohen's kappa with bootstrap 95 % intervals, confusion tables.
The thresholds shipped in :class:`inference.descriptors.Thresholds` are the same procedure
run on every lesion (``shipped`` in the result).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from inference.data import read_grayscale, read_mask
from inference.descriptors import (
    ECHO_PATTERNS,
    MARGINS,
    POSTERIOR_FEATURES,
    SHAPES,
    LesionFeatures,
    LogisticHead,
    Thresholds,
    echo_pattern_rule,
    lesion_features,
    margin_rule,
    posterior_rule,
    shape_rule,
)

if TYPE_CHECKING:
    from inference.model import Model

__all__ = [
    "DESCRIPTORS",
    "HEAD_C_GRID",
    "HEAD_FEATURES",
    "evaluate_descriptors",
    "fit_logistic_head",
    "head_from_pipeline",
    "head_held_out",
    "render_markdown",
    "tune",
]

_Rule = Callable[[LesionFeatures, Thresholds], str]


@dataclass(frozen=True)
class _Descriptor:
    """One evaluated descriptor: its rule, its words, the thresholds tuned and their grids."""

    rule: _Rule
    labels: tuple[str, ...]
    grids: dict[str, tuple[float, ...]]


#: Where every search starts: the cut-offs written down before any label was looked at (so
#: that the shipped defaults, tuned on every lesion, cannot leak into the held-out folds).
PRIOR = Thresholds(
    round_axis_ratio=0.85,
    irregular_solidity=0.90,
    irregular_ellipse_iou=0.80,
    circumscribed_edge_gradient=0.05,
    circumscribed_solidity=0.92,
    circumscribed_ellipse_iou=0.85,
    anechoic_share=0.90,
    hypoechoic_ratio=0.80,
    hyperechoic_ratio=1.20,
    heterogeneous_cv=0.60,
    complex_share=0.20,
    enhancement_ratio=1.20,
    shadowing_ratio=0.80,
    combined_split=0.40,
)


def _grid(start: float, stop: float, step: float, *extra: float) -> tuple[float, ...]:
    values = np.round(np.arange(start, stop + step / 2, step), 4).tolist()
    return tuple(float(v) for v in [*values, *extra])


OFF = 9.0  # a cut-off no feature reaches (ratios and shares stay far below): the branch is off
DESCRIPTORS: dict[str, _Descriptor] = {
    "shape": _Descriptor(
        shape_rule,
        SHAPES,
        {
            "irregular_solidity": _grid(0.85, 0.97, 0.01, 0.0),
            "irregular_ellipse_iou": _grid(0.76, 0.92, 0.02, 0.0),
            "round_axis_ratio": _grid(0.75, 0.95, 0.05, OFF),
        },
    ),
    "margin": _Descriptor(
        margin_rule,
        MARGINS,
        {
            "circumscribed_solidity": _grid(0.86, 0.97, 0.01, 0.0),
            "circumscribed_ellipse_iou": _grid(0.76, 0.92, 0.02, 0.0),
            "circumscribed_edge_gradient": _grid(0.04, 0.24, 0.02, 0.0),
        },
    ),
    "echo_pattern": _Descriptor(
        echo_pattern_rule,
        ECHO_PATTERNS,
        {
            "anechoic_share": _grid(0.8, 0.95, 0.05, OFF),
            "hypoechoic_ratio": _grid(0.5, 0.9, 0.05, OFF),
            "hyperechoic_ratio": _grid(0.7, 1.2, 0.1, OFF),
            "heterogeneous_cv": _grid(0.35, 0.7, 0.05, OFF),
            "complex_share": _grid(0.15, 0.35, 0.05, OFF),
        },
    ),
    "posterior": _Descriptor(
        posterior_rule,
        POSTERIOR_FEATURES,
        {
            "enhancement_ratio": _grid(1.05, 1.5, 0.05, OFF),
            "shadowing_ratio": _grid(0.6, 0.95, 0.05, 0.0),
            "combined_split": _grid(0.1, 0.6, 0.1, OFF),
        },
    ),
}


@dataclass(frozen=True)
class Case:
    """One lesion of the set: files, spacing and the radiologist's words (ours)."""

    name: str
    image: Path
    mask: Path
    mm_per_pixel: float
    truth: dict[str, str]


def _margin_word(value: str) -> str:
    return "circumscribed" if value.strip() == "circumscribed" else "not circumscribed"


def _echo_word(value: str) -> str:
    return "complex cystic and solid" if value.startswith("complex") else value.strip()


def _posterior_word(value: str) -> str:
    return "none" if value.strip() == "no" else value.strip()


def load_cases(data_dir: Path) -> list[Case]:
    """Lesions of a BrEaST-Lesions_USG folder (``manifest.csv``); normal images are left out."""
    manifest = Path(data_dir) / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found (expected the breast/ set's layout)")
    cases = []
    with manifest.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["shape"] == "not applicable" or row["lesion_masks"] in ("", "0"):
                continue
            cases.append(
                Case(
                    name=row["original_name"] or row["image"],
                    image=Path(data_dir) / row["image"],
                    mask=Path(data_dir) / row["mask"],
                    mm_per_pixel=float(row["pixel_size_mm"]),
                    truth={
                        "shape": row["shape"].strip(),
                        "margin": _margin_word(row["margin"]),
                        "echo_pattern": _echo_word(row["echogenicity"]),
                        "posterior": _posterior_word(row["posterior"]),
                        "margin_detail": row["margin"].partition(" - ")[2],
                    },
                )
            )
    return cases


def _accuracy(
    rule: _Rule, feats: Sequence[LesionFeatures], truth: Sequence[str], t: Thresholds
) -> float:
    return float(np.mean([rule(f, t) == y for f, y in zip(feats, truth, strict=True)]))


def tune(
    name: str,
    feats: Sequence[LesionFeatures],
    truth: Sequence[str],
    start: Thresholds | None = None,
    sweeps: int = 2,
) -> Thresholds:
    """Coordinate search of descriptor `name`'s cut-offs maximising accuracy on these lesions.

    Each sweep tries every grid value of one cut-off with the others fixed and keeps the
    best; a tie keeps the current value (so :data:`PRIOR` wins unless beaten).
    """
    spec = DESCRIPTORS[name]
    current = start or PRIOR
    best = _accuracy(spec.rule, feats, truth, current)
    for _ in range(sweeps):
        for key, values in spec.grids.items():
            for value in values:
                candidate = current.replace(**{key: value})
                score = _accuracy(spec.rule, feats, truth, candidate)
                if score > best + 1e-12:
                    best, current = score, candidate
    return current


def _folds(truth: Sequence[str], k: int, seed: int) -> np.ndarray:
    """Fold number per lesion, stratified by label (round-robin within each shuffled label)."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(truth), dtype=int)
    for label in sorted(set(truth)):
        idx = np.nonzero(np.asarray(truth) == label)[0]
        rng.shuffle(idx)
        offset = int(rng.integers(k))
        fold[idx] = (np.arange(len(idx)) + offset) % k
    return fold


def _agreement(
    truth: Sequence[str],
    pred: Sequence[str | None],
    labels: Sequence[str],
    bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Accuracy and Cohen's kappa with bootstrap 95 % intervals, and the confusion table."""
    y = np.asarray(truth, dtype=object)
    p = np.asarray([v if v is not None else "(none)" for v in pred], dtype=object)
    all_labels = [*labels, "(none)"]

    def point(idx: np.ndarray) -> tuple[float, float]:
        acc = float(np.mean(y[idx] == p[idx]))
        if len(set(y[idx]) | set(p[idx])) < 2:
            return acc, float("nan")
        return acc, float(cohen_kappa_score(y[idx], p[idx], labels=all_labels))

    everything = np.arange(len(y))
    acc, kappa = point(everything)
    rng = np.random.default_rng(seed)
    samples = np.array([point(rng.integers(0, len(y), len(y))) for _ in range(bootstrap)])
    confusion = {
        t: {
            q: int(np.sum((y == t) & (p == q))) for q in all_labels if q in labels or (p == q).any()
        }
        for t in labels
        if (y == t).any()
    }
    majority = max(set(truth), key=list(truth).count)
    return {
        "n": len(y),
        "accuracy": acc,
        "accuracy_ci": [
            float(np.nanpercentile(samples[:, 0], 2.5)),
            float(np.nanpercentile(samples[:, 0], 97.5)),
        ],
        "kappa": kappa,
        "kappa_ci": [
            float(np.nanpercentile(samples[:, 1], 2.5)),
            float(np.nanpercentile(samples[:, 1], 97.5)),
        ],
        "majority_label": majority,
        "majority_accuracy": float(np.mean(y == majority)),
        "no_prediction": int(np.sum(p == "(none)")),
        "confusion": confusion,
    }


#: Inputs of the learned head per descriptor: features the rules already compute.
HEAD_FEATURES: dict[str, tuple[str, ...]] = {
    "margin": (
        "edge_gradient",
        "solidity",
        "ellipse_iou",
        "protrusion",
        "roughness",
        "spikes",
        "corner",
        "weak_margin",
        "axis_ratio",
    ),
    "echo_pattern": ("echo_ratio", "cv_in", "dark_share", "bright_share", "mean_in", "mean_around"),
}
#: Inverse L2 strengths tried by the inner CV (pre-registered in docs/experiments/descriptors.md).
HEAD_C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def _matrix(feats: Sequence[LesionFeatures], names: Sequence[str]) -> np.ndarray:
    return np.array([[getattr(f, n) for n in names] for f in feats], dtype=np.float64)


def fit_logistic_head(
    x: np.ndarray, y: Sequence[str], seed: int = 0, inner_folds: int = 4
) -> tuple[Pipeline, float]:
    """L2 logistic regression on standardised `x`, C chosen by an inner stratified CV on these
    rows only (mean accuracy, ties to the smaller C: the stronger penalty), refitted on all.

    Returns the fitted pipeline and the chosen C.
    """
    labels = np.asarray(y, dtype=object)
    smallest = min(int(np.sum(labels == v)) for v in set(labels))
    splits = max(2, min(inner_folds, smallest))
    inner = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)

    def make(c: float) -> Pipeline:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))

    best_c, best_score = HEAD_C_GRID[0], -1.0
    with warnings.catch_warnings():
        # A class rarer than the inner folds cannot be in each fold: expected on 126 lesions.
        warnings.simplefilter("ignore", UserWarning)
        for c in HEAD_C_GRID:
            scores = []
            for tr, te in inner.split(x, labels):
                model = make(c).fit(x[tr], labels[tr])
                scores.append(float(np.mean(model.predict(x[te]) == labels[te])))
            score = float(np.mean(scores))
            if score > best_score + 1e-12:
                best_c, best_score = c, score
    return make(best_c).fit(x, labels), best_c


def head_from_pipeline(name: str, model: Pipeline, c: float) -> LogisticHead:
    """The fitted scaler + logistic regression as a :class:`LogisticHead` (what ships)."""
    scaler: StandardScaler = model.steps[0][1]
    logistic: LogisticRegression = model.steps[-1][1]
    return LogisticHead(
        descriptor=name,
        features=HEAD_FEATURES[name],
        classes=tuple(str(v) for v in logistic.classes_),
        mean=tuple(float(v) for v in scaler.mean_),
        scale=tuple(float(v) for v in scaler.scale_),
        coef=tuple(tuple(float(v) for v in row) for row in logistic.coef_),
        intercept=tuple(float(v) for v in logistic.intercept_),
        c=float(c),
    )


def head_held_out(
    name: str,
    reference: Sequence[LesionFeatures],
    truth: Sequence[str],
    fold_of: np.ndarray,
    others: Sequence[Sequence[LesionFeatures | None]] = (),
    seed: int = 0,
) -> tuple[list[str], list[list[str | None]], list[float]]:
    """Held-out predictions of the logistic head for descriptor `name` on the given outer folds.

    Each outer fold's head (and its C) is fitted on the other folds' `reference` features
    only; the held-out fold is predicted from `reference` and from each of `others` (e.g. the
    model's masks, None where no mask). Returns (reference predictions, predictions per other
    source, C per fold).
    """
    names = HEAD_FEATURES[name]
    x = _matrix(reference, names)
    y = np.asarray(truth, dtype=object)
    pred: list[str] = [""] * len(y)
    other_pred: list[list[str | None]] = [[None] * len(y) for _ in others]
    chosen: list[float] = []
    for k in sorted(set(fold_of.tolist())):
        train, test = np.nonzero(fold_of != k)[0], np.nonzero(fold_of == k)[0]
        model, c = fit_logistic_head(x[train], y[train], seed=seed)
        head = head_from_pipeline(name, model, c)  # predict as describe_lesion would
        chosen.append(c)
        for j in test:
            pred[j] = head.predict(reference[j])
        for out, feats in zip(other_pred, others, strict=True):
            for j in test:
                f = feats[j]
                if f is not None:
                    out[j] = head.predict(f)
    return pred, other_pred, chosen


def _features(
    cases: Sequence[Case], masks: Sequence[np.ndarray] | None
) -> list[LesionFeatures | None]:
    out: list[LesionFeatures | None] = []
    for i, case in enumerate(cases):
        image = read_grayscale(case.image)
        mask = read_mask(case.mask, image.shape) if masks is None else masks[i]
        try:
            out.append(lesion_features(image, mask, case.mm_per_pixel, case.mm_per_pixel))
        except ValueError:  # empty or tiny mask: no descriptors
            out.append(None)
    return out


def predict_masks(cases: Sequence[Case], model: Model, batch: int = 8) -> list[np.ndarray]:
    """The model's mask of each case's image (its own grid)."""
    masks: list[np.ndarray] = []
    for start in range(0, len(cases), batch):
        images = [read_grayscale(c.image) for c in cases[start : start + batch]]
        masks.extend(p.mask for p in model.predict(images))
    return masks


def evaluate_descriptors(
    data_dir: Path,
    model: Model | None = None,
    folds: int = 5,
    seed: int = 0,
    bootstrap: int = 1000,
    head: str | None = None,
) -> dict[str, Any]:
    """Agreement of the descriptors with the radiologist of a BrEaST-Lesions_USG folder.

    Parameters
    ----------
    data_dir: Path
        The ``breast/`` folder (``manifest.csv`` with shape, margin, echogenicity, posterior).
    model: Model, optional
        Also describe the model's masks (the whole chain); None: radiologist's masks only.
    folds: int
        Cross-validation folds, stratified by the descriptor's label. The cut-offs of each
        fold are chosen (:func:`tune`) on the other folds' radiologist-mask features only;
        the held-out fold is described with them, from either mask source.
    bootstrap: int
        Resamples of the lesions for the 95 % intervals.
    head: str, optional
        ``"logistic"``: also score the learned head (:func:`head_held_out`) of each
        descriptor in :data:`HEAD_FEATURES` on the same outer folds, as ``head_agreement``
        (same layout as ``agreement``), ``head_c`` (C chosen per fold) and ``head_fitted``
        (the head fitted on every lesion, :meth:`LogisticHead.as_dict`: what would ship).

    Returns
    -------
    dict
        ``agreement[source][descriptor]`` (source ``radiologist_mask`` / ``model_mask``),
        each with accuracy, kappa, intervals, majority baseline and confusion table;
        ``shipped`` (cut-offs tuned on every lesion) and ``shipped_in_sample`` (their
        accuracy on the same lesions, optimistic); ``fold_thresholds``; ``sizes``.
    """
    cases = load_cases(data_dir)
    if not cases:
        raise ValueError(f"no lesions in {data_dir}")
    sources: dict[str, list[LesionFeatures | None]] = {"radiologist_mask": _features(cases, None)}
    predicted: list[np.ndarray] | None = None
    if model is not None:
        predicted = predict_masks(cases, model)
        sources["model_mask"] = _features(cases, predicted)
    reference = sources["radiologist_mask"]
    usable = [i for i, f in enumerate(reference) if f is not None]

    agreement: dict[str, dict[str, Any]] = {s: {} for s in sources}
    fold_thresholds: dict[str, list[dict[str, float]]] = {}
    shipped = PRIOR
    shipped_in_sample: dict[str, float] = {}
    if head not in (None, "logistic"):
        raise ValueError(f"unknown head {head!r} (known: 'logistic')")
    head_agreement: dict[str, dict[str, Any]] = {s: {} for s in sources}
    head_c: dict[str, list[float]] = {}
    head_fitted: dict[str, dict[str, Any]] = {}
    for name, spec in DESCRIPTORS.items():
        truth = [cases[i].truth[name] for i in usable]
        fold_of = _folds(truth, folds, seed)
        held_out: dict[str, list[str | None]] = {s: [None] * len(usable) for s in sources}
        fold_thresholds[name] = []
        for k in range(folds):
            train = [j for j in range(len(usable)) if fold_of[j] != k]
            t = tune(name, [reference[usable[j]] for j in train], [truth[j] for j in train])
            fold_thresholds[name].append({key: getattr(t, key) for key in spec.grids})
            for j in np.nonzero(fold_of == k)[0]:
                for source, feats in sources.items():
                    f = feats[usable[j]]
                    held_out[source][j] = spec.rule(f, t) if f is not None else None
        for source in sources:
            agreement[source][name] = _agreement(
                truth, held_out[source], spec.labels, bootstrap, seed
            )
        if head is not None and name in HEAD_FEATURES:
            others = [s for s in sources if s != "radiologist_mask"]
            ref_pred, other_pred, head_c[name] = head_held_out(
                name,
                [reference[i] for i in usable],  # type: ignore[misc]
                truth,
                fold_of,
                [[sources[s][i] for i in usable] for s in others],
                seed=seed,
            )
            head_agreement["radiologist_mask"][name] = _agreement(
                truth, ref_pred, spec.labels, bootstrap, seed
            )
            everyone_x = _matrix([reference[i] for i in usable], HEAD_FEATURES[name])  # type: ignore[misc]
            model_all, c_all = fit_logistic_head(everyone_x, truth, seed=seed)
            head_fitted[name] = head_from_pipeline(name, model_all, c_all).as_dict()
            for source, pred in zip(others, other_pred, strict=True):
                head_agreement[source][name] = _agreement(truth, pred, spec.labels, bootstrap, seed)
        everyone = [reference[i] for i in usable]
        tuned = tune(name, everyone, truth)
        shipped = shipped.replace(**{key: getattr(tuned, key) for key in spec.grids})
        shipped_in_sample[name] = _accuracy(spec.rule, everyone, truth, tuned)  # type: ignore[arg-type]

    sizes = _size_check(cases, reference, sources.get("model_mask"))
    return {
        "data_dir": str(data_dir),
        "lesions": len(cases),
        "described": len(usable),
        "folds": folds,
        "seed": seed,
        "bootstrap": bootstrap,
        "model_version": getattr(model, "version", None),
        "agreement": agreement,
        "shipped": {
            k: v
            for k, v in asdict(shipped).items()
            if any(k in d.grids for d in DESCRIPTORS.values())
        },
        "shipped_in_sample": shipped_in_sample,
        "fold_thresholds": fold_thresholds,
        "sizes": sizes,
        **(
            {
                "head": head,
                "head_agreement": head_agreement,
                "head_c": head_c,
                "head_fitted": head_fitted,
            }
            if head
            else {}
        ),
    }


def _size_check(
    cases: Sequence[Case],
    reference: Sequence[LesionFeatures | None],
    model: Sequence[LesionFeatures | None] | None,
) -> dict[str, Any]:
    """Long axis in mm on the radiologist's masks (pixel_size_mm of the set) and, where the
    model found a lesion, the model mask's long axis against it."""
    longs = np.array([f.long_axis for f in reference if f is not None])
    out: dict[str, Any] = {
        "radiologist_long_axis_mm": {
            "median": float(np.median(longs)),
            "p5": float(np.percentile(longs, 5)),
            "p95": float(np.percentile(longs, 95)),
        },
        "mm_per_pixel": {
            "min": min(c.mm_per_pixel for c in cases),
            "max": max(c.mm_per_pixel for c in cases),
        },
    }
    if model is not None:
        pairs = [
            (r.long_axis, m.long_axis)
            for r, m in zip(reference, model, strict=True)
            if r is not None and m is not None
        ]
        if pairs:
            ref, pred = np.array(pairs).T
            out["model_vs_radiologist_long_axis"] = {
                "pairs": len(pairs),
                "median_abs_diff_mm": float(np.median(np.abs(pred - ref))),
                "median_ratio": float(np.median(pred / ref)),
                "within_20_percent": float(np.mean(np.abs(pred - ref) <= 0.2 * ref)),
            }
    return out


def _fmt_ci(value: float, ci: Sequence[float]) -> str:
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def render_markdown(result: dict[str, Any]) -> str:
    """The agreement and confusion tables as Markdown (docs/experiments/descriptors.md)."""
    lines = [
        f"{result['described']} lesions, {result['folds']}-fold cross-validation (seed "
        f"{result['seed']}), {result['bootstrap']} bootstrap resamples; model "
        f"{result['model_version'] or '(not run)'}.",
        "",
        "| descriptor | mask | accuracy [95% CI] | Cohen's kappa [95% CI] | majority baseline "
        "| no mask |",
        "|---|---|---|---|---|---|",
    ]
    for name in DESCRIPTORS:
        for source, table in result["agreement"].items():
            a = table[name]
            lines.append(
                f"| {name} | {source.replace('_', ' ')} "
                f"| {_fmt_ci(a['accuracy'], a['accuracy_ci'])}"
                f" | {_fmt_ci(a['kappa'], a['kappa_ci'])} | {a['majority_accuracy']:.2f} "
                f"({a['majority_label']}) | {a['no_prediction']} |"
            )
    if result.get("head_agreement"):
        lines += [
            "",
            f"**Learned head ({result['head']}) against the rule, same outer folds**",
            "",
            "| descriptor | mask | rule accuracy | head accuracy | rule kappa | head kappa "
            "| C per fold |",
            "|---|---|---|---|---|---|---|",
        ]
        for source, table in result["head_agreement"].items():
            for name, h in table.items():
                a = result["agreement"][source][name]
                lines.append(
                    f"| {name} | {source.replace('_', ' ')} "
                    f"| {_fmt_ci(a['accuracy'], a['accuracy_ci'])} "
                    f"| {_fmt_ci(h['accuracy'], h['accuracy_ci'])} "
                    f"| {_fmt_ci(a['kappa'], a['kappa_ci'])} "
                    f"| {_fmt_ci(h['kappa'], h['kappa_ci'])} "
                    f"| {', '.join(f'{c:g}' for c in result['head_c'][name])} |"
                )
    for source, table in result["agreement"].items():
        for name in DESCRIPTORS:
            confusion = table[name]["confusion"]
            columns = sorted(
                {q for row in confusion.values() for q in row}, key=lambda q: (q == "(none)", q)
            )
            lines += [
                "",
                f"**{name}, {source.replace('_', ' ')}** (rows: radiologist, columns: ours)",
                "",
                "| | " + " | ".join(columns) + " |",
                "|---|" + "---|" * len(columns),
            ]
            for truth, row in confusion.items():
                lines.append(
                    f"| {truth} | " + " | ".join(str(row.get(q, 0)) for q in columns) + " |"
                )
    return "\n".join(lines)
