"""The radiologist's corrected SEG in a real viewer (OHIF 3.13.2 via viewer-check).

The corrected SEG carries a second Referenced Series item (the AI SEG it corrects, after the
source series) and a further Source Image Sequence item; the viewer must still overlay it on
the source. The corrected outline lies away from the AI lesion, so an overlay drawn from the
AI mask (or in the wrong place) fails the check of tests/viewer/test_ohif.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io.corrected import build_corrected_seg
from dicom_io.polygons import Polygon, polygons_to_mask
from service.pipeline import SourceImage, algorithm_info, process_study
from tests.factories import make_us_image
from tests.service.test_pipeline import ThresholdModel
from tests.viewer.test_ohif import CENTER, COLUMNS, RADII, ROWS, _check_overlay, _screenshot
from tests.viewer.test_ohif import pytestmark as ohif_marks

pytestmark = ohif_marks

#: Lower left of the frame; the AI lesion is upper right (CENTER (60, 170)).
OUTLINE = Polygon(((40.0, 110.0), (110.0, 105.0), (120.0, 150.0), (45.0, 160.0)))


@pytest.mark.parametrize("from_ai", [True, False], ids=["semiautomatic", "manual"])
def test_ohif_shows_the_corrected_seg_where_the_radiologist_drew(
    tmp_path: Path, from_ai: bool
) -> None:
    source = make_us_image(
        tmp_path / "source.dcm", rows=ROWS, columns=COLUMNS, lesion=CENTER, lesion_radii=RADII
    )
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    result = process_study(
        [SourceImage(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), source)],
        ThresholdModel(),
        tmp_path / "out",
        explain=False,
    )
    (ai_seg_path,) = [o.path for o in result.outputs if o.kind == "seg"]
    mask = polygons_to_mask([OUTLINE], (ROWS, COLUMNS)).astype(bool)
    seg = build_corrected_seg(
        ds, mask[np.newaxis], [1], algorithm_info(ThresholdModel()), reviewer="rhea",
        from_ai=from_ai, ai_seg=pydicom.dcmread(ai_seg_path, stop_before_pixels=True),
        uid_source="viewer-check", series_number=992,
    )
    seg_path = tmp_path / "corrected.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    started = time.perf_counter()
    shot = _screenshot(source, seg_path, tmp_path / f"corrected-{tmp_path.name}.png")
    figures = _check_overlay(shot, mask)
    print(f"viewer check (corrected SEG) {time.perf_counter() - started:.1f} s: {figures}")
