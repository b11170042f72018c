"""The vendor protocol on generated folders: sides of the split, the gate rule, calibration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.data import discover
from inference.model import Prediction
from inference.protocol import (
    ImageRecord,
    choose_gate,
    collect,
    held_out_samples,
    protocol_report,
    render,
    source_metrics,
)
from tests.inference.conftest import make_busi


@dataclass
class FakeModel:
    """Finds the bright blob the generator draws; p(normal) high when it finds none."""

    meta: dict = field(default_factory=dict)
    temperature: float = 1.0
    version: str = "fake"

    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        out = []
        for im in images:
            mask = im > 0.75
            p = np.array([0.1, 0.6, 0.3]) if mask.any() else np.array([0.8, 0.15, 0.05])
            out.append(Prediction(mask=mask, probabilities=dict(zip(
                ("normal", "benign", "malignant"), p.tolist(), strict=True)),
                predicted_class="normal"))
        return out


def test_a_folder_never_trained_on_is_measured_whole(tmp_path: Path) -> None:
    busi, uclm = make_busi(tmp_path / "busi"), make_busi(tmp_path / "uclm", seed=2)
    config = {"data_dirs": [str(busi)], "val_fraction": 0.25, "seed": 0}
    val, side = held_out_samples(busi, config)
    assert side == "val" and 0 < len(val) < len(discover(busi))
    everything, side = held_out_samples(uclm, config)
    assert side == "all" and len(everything) == len(discover(uclm))
    records = collect(FakeModel(meta={"train_config": config}), [busi, uclm])
    assert {r.source for r in records} == {"busi", "uclm"}
    assert {r.side for r in records if r.source == "uclm"} == {"all"}
    report = protocol_report(records, bootstrap=50)
    assert set(report["sources"]) == {"busi", "uclm"}
    assert "| uclm | all | chosen |" in render(report)


def _record(label: int, p_normal: float, source: str = "busi", found: bool = True) -> ImageRecord:
    rest = (1 - p_normal) / 2
    return ImageRecord(source=source, group=f"g{label}{p_normal}", label=label,
                       log_probs=tuple(np.log([p_normal, rest, rest]).tolist()),  # type: ignore
                       temperature=1.0, dice=0.8 if label else 1.0, has_lesion=label > 0,
                       mask_nonempty=found, side="val")


def test_gate_bounds_missed_lesions_first() -> None:
    # 40 lesions: p(normal) 0.01..0.40 step 0.01 plus 2 at 0.9 (5 % would be missed at 0.9)
    lesions = [_record(1, p) for p in np.arange(1, 41) / 100]
    lesions += [_record(2, 0.9), _record(2, 0.95)]
    normals = [_record(0, p) for p in (0.6, 0.7, 0.8, 0.97, 0.99)]
    gate = choose_gate(lesions + normals, max_missed=0.03)
    # at 0.9 the gate would miss 2/42 = 4.8 %; at 0.95 it misses 1/42 = 2.4 %, within 3 %
    assert gate == 0.95
    m = source_metrics(lesions + normals, gate, None, bootstrap=0)
    assert abs(m["lesion_missed_rate"] - 1 / 42) < 1e-9
    assert m["normal_false_positive_rate"] == 0.6  # 3 of 5 normals keep their false lesion
    loose = choose_gate(lesions + normals, max_missed=0.05)
    assert 0.5 <= loose <= 0.9


def test_a_gated_lesion_counts_as_missed_with_dice_zero() -> None:
    records = [_record(1, 0.99), _record(1, 0.1)]
    m = source_metrics(records, 0.5, None, bootstrap=0)
    assert m["lesion_missed_rate"] == 0.5 and abs(m["dice_mean"] - 0.4) < 1e-9
