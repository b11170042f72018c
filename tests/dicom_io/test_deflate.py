"""Deflate bombs (dicom_io.deflate) and the memory bounds of reading deflated files.

Bombs are built in code (tests/deflate_bombs.py): a 1 GiB bomb is a 1 MB file. Peak memory
is measured in a child process (ru_maxrss is a per-process high-water mark).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tracemalloc
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filereader import _read_command_set_elements, _read_file_meta_info, read_preamble

from dicom_io.deflate import (
    InflateLimitError,
    check_inflated_size,
    deflated_data_set_offset,
)
from dicom_io.errors import UnsupportedObjectError
from dicom_io.read import FRAME_BUDGET_BYTES, iter_frames, read_frames, read_header, read_info
from tests.deflate_bombs import (
    CHUNK,
    GIB,
    base_dataset,
    ct_bomb,
    deflated_bytes,
    us_multiframe_bomb,
)
from tests.factories import make_us_image

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def _pydicom_offset(data: bytes) -> tuple[str, int]:
    """Where pydicom's own reader starts the data set, and the transfer syntax it sees."""
    fp = BytesIO(data)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    _read_command_set_elements(fp)
    return str(meta.get("TransferSyntaxUID", "")), fp.tell()


def _element(group: int, element: int, vr: bytes | None, value: bytes) -> bytes:
    if vr is None:  # implicit VR
        return struct.pack("<HHI", group, element, len(value)) + value
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _part10(meta: bytes, body: bytes, command: bytes = b"") -> bytes:
    return b"\0" * 128 + b"DICM" + meta + command + body


_DEFLATED = b"1.2.840.10008.1.2.1.99\0"
_BODY = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
_SMALL_BODY = _BODY.compress(_element(0x0008, 0x0060, b"CS", b"US")) + _BODY.flush()


@pytest.mark.parametrize(
    "meta, command",
    [
        (_element(2, 0x0010, b"UI", _DEFLATED), b""),
        (_element(2, 0x0000, b"UL", b"\x1e\0\0\0") + _element(2, 0x0010, b"UI", _DEFLATED), b""),
        (_element(2, 0x0000, None, b"\x1e\0\0\0") + _element(2, 0x0010, None, _DEFLATED), b""),
        (_element(2, 0x0001, b"OB", b"\0\1") + _element(2, 0x0010, b"UI", _DEFLATED), b""),
        (_element(2, 0x0010, b"UI", _DEFLATED), _element(0, 0x0002, None, b"1.2\0")),
        (_element(2, 0x0010, b"UI", b"1.2.840.10008.1.2.1\0"), b""),
        (_element(2, 0x0002, b"UI", b"1.2\0"), b""),
        (_element(2, 0x0001, b"XX", b"ab") + _element(2, 0x0010, b"UI", _DEFLATED), b""),
        (_element(2, 0x0010, b"UI", _DEFLATED) + _element(2, 0x0100, b"XX", b"ab"), b""),
        (_element(2, 0x0010, b"UI", _DEFLATED), _element(0, 0x0002, b"UI", b"1.2\0")),
        (_element(2, 0x0010, b"UI", _DEFLATED) + _element(2, 0x0100, None, b"ab"), b""),
        (_element(2, 0x0010, b"UI", _DEFLATED) + _element(2, 0x0100, b"\x01\0", b"ab"), b""),
    ],
    ids=[
        "explicit",
        "group-length",
        "implicit-meta",
        "OB",
        "command-set",
        "explicit-ts",
        "no-ts",
        "unknown-vr-first",
        "unknown-vr-later",
        "explicit-command-set",
        "implicit-element-in-explicit",
        "element-past-the-end",
    ],
)
@pytest.mark.filterwarnings("ignore:Expected (explicit|implicit) VR")
def test_deflated_data_set_offset_variants_match_pydicom_reader(
    meta: bytes, command: bytes
) -> None:
    data = _part10(meta, _SMALL_BODY, command)
    syntax, offset = _pydicom_offset(data)
    # At the end of the data (an element claiming more bytes than there are) pydicom
    # inflates nothing.
    deflated = syntax == "1.2.840.10008.1.2.1.99" and offset < len(data)
    expected = offset if deflated else None
    assert deflated_data_set_offset(BytesIO(data)) == expected


def test_check_inflated_size_ct_bomb_refused_too_large() -> None:
    bomb = ct_bomb(GIB)
    assert len(bomb) < 2 * MIB  # 1 GiB of zeros in about 1 MB

    with pytest.raises(InflateLimitError) as caught:
        check_inflated_size(bomb)

    assert caught.value.code == "too_large"
    assert "deflated data set inflates beyond 256 MiB" in str(caught.value)


def test_check_inflated_size_limit_is_inclusive_and_configurable() -> None:
    bomb = ct_bomb(8 * CHUNK)
    size = check_inflated_size(bomb, limit_bytes=GIB)
    assert size is not None and 8 * CHUNK < size < 8 * CHUNK + 4096  # zeros plus the header

    assert check_inflated_size(bomb, limit_bytes=size) == size
    with pytest.raises(InflateLimitError, match="beyond 4 MiB"):
        check_inflated_size(bomb, limit_bytes=4 * MIB)


def test_check_inflated_size_real_deflated_us_file_returns_inflated_size(tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "us.dcm", transfer_syntax="deflate")
    raw = path.read_bytes()
    _, offset = _pydicom_offset(raw)

    size = check_inflated_size(path)

    assert size == len(zlib.decompress(raw[offset:], -zlib.MAX_WBITS))
    assert check_inflated_size(raw) == size  # bytes as from C-STORE or upload


def test_check_inflated_size_not_deflated_returns_none(tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "us.dcm")
    assert check_inflated_size(path) is None
    assert check_inflated_size(b"not dicom at all") is None  # pydicom refuses it unread


@pytest.mark.parametrize("cut", ["corrupt", "truncated"])
def test_check_inflated_size_broken_stream_unreadable(cut: str) -> None:
    bomb = ct_bomb(4 * CHUNK)
    _, offset = _pydicom_offset(bomb)
    data = bomb[:offset] + b"\xff" * 64 if cut == "corrupt" else bomb[:-40]

    with pytest.raises(UnsupportedObjectError) as caught:
        check_inflated_size(data)

    assert caught.value.code == "unreadable"


def test_readers_us_rgb_bomb_refused_before_inflating(tmp_path: Path) -> None:
    # 8 frames of 4096 x 4096 RGB: 384 MiB inflated from a 400 kB file.
    path = tmp_path / "bomb.dcm"
    path.write_bytes(us_multiframe_bomb(samples=3))

    for read in (read_header, read_info, read_frames, lambda p: next(iter_frames(p))):
        with pytest.raises(UnsupportedObjectError) as caught:
            read(path)
        assert caught.value.code == "too_large", read
        assert "inflates beyond 256 MiB" in str(caught.value)


def test_iter_frames_deflated_us_decodes_as_uncompressed(tmp_path: Path) -> None:
    deflated = make_us_image(tmp_path / "d.dcm", transfer_syntax="deflate", frames=3)
    plain = make_us_image(tmp_path / "p.dcm", frames=3)

    got = np.concatenate([pixels for _, pixels in iter_frames(deflated)])

    assert got.shape == (3, 256, 320)
    np.testing.assert_array_equal(got, read_frames(plain).pixels)
    assert read_header(deflated).buffer is None  # the inflated stream is not kept


def test_iter_frames_big_frames_batch_within_budget(tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    path.write_bytes(us_multiframe_bomb(frames=4, rows=2048, columns=2048, samples=3))

    batches = [(numbers, pixels.shape) for numbers, pixels in iter_frames(path, batch=16)]

    frame_bytes = 2048 * 2048 * 3 * 4
    per_batch = FRAME_BUDGET_BYTES // frame_bytes
    assert [len(numbers) for numbers, _ in batches] == [per_batch] * (4 // per_batch)
    assert all(shape[1:] == (2048, 2048) for _, shape in batches)


_MEASURE = """
import json, resource, sys
from pathlib import Path
from dicom_io.read import iter_frames, read_info

def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
path = Path(sys.argv[1])
before = peak()
info = read_info(path)
frames = [numbers for numbers, _ in iter_frames(path)]
print(json.dumps({"growth": peak() - before, "frames": info.number_of_frames, "batches": frames}))
"""


def test_iter_frames_8_frames_4096_deflated_peak_memory_bounded(tmp_path: Path) -> None:
    # 8 grey frames of 4096 x 4096, deflated: 128 MiB inflated, 512 MiB as float32. Before
    # the budget, all 8 were decoded in one batch: +2176 MB peak; now about +450 MB.
    path = tmp_path / "big.dcm"
    path.write_bytes(us_multiframe_bomb(samples=1))

    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["frames"] == 8
    assert [n for batch in result["batches"] for n in batch] == list(range(1, 9))
    assert max(len(batch) for batch in result["batches"]) == 2
    assert result["growth"] < 700 * MIB, result["growth"] / MIB


def test_read_header_deflated_within_limit_reads_like_pydicom(tmp_path: Path) -> None:
    path = make_us_image(tmp_path / "us.dcm", transfer_syntax="deflate")
    header = read_header(path)
    assert header.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID
    with pytest.raises(InflateLimitError):
        read_header(path, max_inflated_bytes=1024)


def test_read_frames_excess_native_pixel_data_cut_before_decoding(tmp_path: Path) -> None:
    # A 64 x 80 grey image followed by 64 MiB of zeros in its Pixel Data (under the inflate
    # limit): pydicom converted all of it while decoding (469 MB peak for an RGB one).
    ds = base_dataset("1.2.840.10008.5.1.4.1.1.6.1", "US")
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = 64, 80
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    data = deflated_bytes(ds, 0x7FE00010, 64 * CHUNK)
    path = tmp_path / "excess.dcm"
    path.write_bytes(data)

    tracemalloc.start()
    try:
        frames = read_frames(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert frames.pixels.shape == (1, 64, 80) and not frames.pixels.any()
    assert peak < 200 * MIB, peak / MIB
