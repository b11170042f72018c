"""Every ultrasound flavour through the whole pipeline (process_study, threshold model).

Inputs: every ultrasound / secondary capture file shipped by pydicom's test files,
pydicom-data and deid-data (found by SOP class, so new files join by themselves; deid's
cine ZIPs unzipped once per session), and small generated files for each transfer syntax
× photometric × planar configuration × bit depth, single and multi-frame, and the retired
and secondary-capture SOP classes. For each: SEG and SR pass dciodvfy with 0 errors, the
SEG read back with highdicom is exactly the model's mask on the right source frames, and
the SR read back gives the same classification and sizes (`tests/service/pipeline_checks`).
Files we must not process are checked to be refused with a reason, never a crash.
"""

from __future__ import annotations

import zipfile
from importlib.util import find_spec
from pathlib import Path

import pydicom
import pydicom.errors
import pytest

from dicom_io.read import SUPPORTED_SOP_CLASSES, skip_code
from service.errors import JobError
from service.pipeline import SourceImage, process_study
from tests.factories import make_us_image
from tests.requirements import require_or_skip
from tests.service.pipeline_checks import check_study_outputs, expected_source
from tests.service.test_pipeline import ThresholdModel

LEVEL = 0.6


def _package_dir(name: str, *parts: str) -> Path | None:
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0], *parts)


def _real_files() -> list[tuple[str, Path]]:
    """(id, path) of every US / SC file of the three packages (header read only)."""
    roots = [
        ("pydicom", _package_dir("pydicom", "data", "test_files")),
        ("pydicom-data", _package_dir("data_store", "data")),
        ("deid-data", _package_dir("deid_data", "data")),
    ]
    found = []
    for label, root in roots:
        if root is None or not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() not in (".dcm", "") or not path.is_file():
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
                continue
            sop_class = str(ds.get("SOPClassUID", ""))
            if sop_class in SUPPORTED_SOP_CLASSES or str(ds.get("Modality", "")) == "US":
                found.append((f"{label}:{path.relative_to(root)}", path))
    return found


REAL_FILES = _real_files()
CINE_ZIPS = ["GREYSCALE_CINE.zip", "RGB_CINE.zip"]

SMALL = {"rows": 64, "columns": 80, "lesion_radii": (10, 14)}
MF = "1.2.840.10008.5.1.4.1.1.3.1"
# (id, transfer syntax, make_us_dataset arguments): every syntax with the photometrics
# it can carry (lossy JPEG never gets palette indices; JPEG baseline/extended 8 bit),
# planar configuration 1 for native colour, 16 bit where the syntax allows it.
GENERATED: list[tuple[str, str, dict]] = []
for syntax in ("explicit", "implicit", "big-endian", "deflate"):
    for photometric in ("MONOCHROME2", "MONOCHROME1", "RGB", "YBR_FULL", "PALETTE COLOR"):
        GENERATED.append((f"{syntax}-{photometric}", syntax, {"photometric": photometric}))
    for photometric in ("RGB", "YBR_FULL"):
        GENERATED.append(
            (
                f"{syntax}-{photometric}-planar1",
                syntax,
                {"photometric": photometric, "planar_configuration": 1},
            )
        )
    GENERATED.append((f"{syntax}-YBR_FULL_422", syntax, {"photometric": "YBR_FULL_422"}))
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        GENERATED.append(
            (f"{syntax}-{photometric}-16bit", syntax, {"photometric": photometric, "bits": 16})
        )
for syntax, photometrics, sixteen in (
    ("jpeg-baseline", ("MONOCHROME2", "MONOCHROME1", "RGB"), False),
    ("jpeg-extended", ("MONOCHROME2", "RGB"), False),
    ("jpeg-lossless", ("MONOCHROME2", "MONOCHROME1", "RGB", "PALETTE COLOR"), True),
    ("jpeg-ls", ("MONOCHROME2", "RGB", "PALETTE COLOR"), True),
    ("jpeg-ls-near", ("MONOCHROME2", "RGB"), True),
    ("jpeg2000-lossless", ("MONOCHROME2", "MONOCHROME1", "RGB", "PALETTE COLOR"), True),
    ("jpeg2000", ("MONOCHROME2", "RGB"), True),
    ("rle", ("MONOCHROME2", "MONOCHROME1", "RGB", "YBR_FULL", "PALETTE COLOR"), True),
):
    for photometric in photometrics:
        GENERATED.append((f"{syntax}-{photometric}", syntax, {"photometric": photometric}))
    if sixteen:
        GENERATED.append((f"{syntax}-MONOCHROME2-16bit", syntax, {"bits": 16}))
# Multi-frame (cine) in each family of syntax, retired and secondary capture classes.
for syntax, kwargs in (
    ("explicit", {"photometric": "RGB"}),
    ("implicit", {"photometric": "PALETTE COLOR"}),
    ("big-endian", {"bits": 16}),
    ("jpeg-baseline", {"photometric": "RGB"}),
    ("jpeg-lossless", {}),
    ("jpeg-ls", {}),
    ("jpeg2000-lossless", {"photometric": "RGB"}),
    ("rle", {"photometric": "YBR_FULL"}),
    ("explicit", {"photometric": "YBR_FULL_422"}),
):
    name = kwargs.get("photometric", "MONOCHROME2") + ("-16bit" if kwargs.get("bits") else "")
    GENERATED.append((f"{syntax}-{name}-multiframe", syntax, {"frames": 3, **kwargs}))
GENERATED += [
    ("retired-US-image", "explicit", {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.6"}),
    (
        "retired-US-multiframe",
        "jpeg-baseline",
        {"frames": 3, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.3"},
    ),
    ("SC-US", "explicit", {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.7", "regions": False}),
    (
        "SC-multiframe-true-colour",
        "explicit",
        {"frames": 3, "photometric": "RGB", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7.4"},
    ),
    (
        "SC-multiframe-grey-word",
        "explicit",
        {"frames": 2, "bits": 16, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7.3"},
    ),
    ("uncalibrated", "explicit", {"regions": False}),
    ("negative-delta", "explicit", {"negative_delta": True}),
    ("no-lesion", "explicit", {"lesion": None}),
]


def _run(paths: list[Path], out: Path, case: str) -> dict:
    sources = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sources.append(SourceImage(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), path))
    result = process_study(sources, ThresholdModel(LEVEL), out)
    expected = [expected_source(p, LEVEL) for p in paths]
    return check_study_outputs(result, expected, case)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("syntax", "kwargs"), [c[1:] for c in GENERATED], ids=[c[0] for c in GENERATED]
)
def test_pipeline_generated_input_gives_valid_exact_seg_and_sr(
    tmp_path: Path, syntax: str, kwargs: dict
) -> None:
    path = make_us_image(tmp_path / "src.dcm", transfer_syntax=syntax, **{**SMALL, **kwargs})
    summary = _run([path], tmp_path / "out", path.name)
    if kwargs.get("lesion", "center") is not None:
        assert summary["segs"] == 1 and summary["findings"] == 1
        assert summary["measured"] == (0 if kwargs.get("regions") is False else 1)
    else:
        assert summary["segs"] == 0 and summary["findings"] == 0


@pytest.mark.integration
@pytest.mark.parametrize("path", [p for _, p in REAL_FILES], ids=[i for i, _ in REAL_FILES])
def test_pipeline_real_file_processed_or_refused_with_reason(tmp_path: Path, path: Path) -> None:
    code = skip_code(pydicom.dcmread(path, stop_before_pixels=True))
    if code is not None:
        # Not ours to analyse (e.g. NM/CT screen captures, no UIDs): refused with a reason.
        with pytest.raises(JobError) as info:
            process_study(
                [SourceImage("1.2.3", "1.2", path)], ThresholdModel(LEVEL), tmp_path / "out"
            )
        assert code in str(info.value)
        return
    _run([path], tmp_path / "out", path.name)


@pytest.fixture(scope="session")
def cine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = _package_dir("deid_data", "data", "ultrasounds")
    require_or_skip(folder is not None, "deid-data not installed")
    assert folder is not None
    out = tmp_path_factory.mktemp("cines")
    for name in CINE_ZIPS:
        with zipfile.ZipFile(folder / name) as archive:
            archive.extractall(out)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("name", ["GREYSCALE_CINE.dcm", "RGB_CINE.dcm"])
def test_pipeline_deid_cine_zip_gives_valid_exact_seg_and_sr(
    tmp_path: Path, cine_dir: Path, name: str
) -> None:
    summary = _run([cine_dir / name], tmp_path / "out", name)
    assert summary["segs"] == 1 and summary["seg_frames"] > 1
