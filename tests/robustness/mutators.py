"""Seeded mutations of ultrasound DICOM files for the fuzz suite.

Each case is (seed file, mutation, rng seed) → bytes of a Part 10 file. The file meta stays
intact (so a sender knows the SOP class, instance and transfer syntax); every case gets its
own Study, Series and SOP Instance UIDs first, so each is one study, one job. Mutations:

- dataset level (pydicom, then written): absurd Rows/Columns/NumberOfFrames/bit depths,
  missing, empty, short or odd-length Pixel Data, wrong VRs and garbage values, hostile US
  Regions, a transfer syntax that does not match the data;
- byte level (on the encoded dataset): truncation, random byte flips, corrupted element
  lengths (0, odd, off by a few, huge), sequences nested up to 5 000 deep;
- transfer syntax level: the (possibly mutated) data set re-encoded as Deflated Explicit VR
  Little Endian, sometimes with a deflate bomb appended (64 MiB to 4 GiB of zeros in a few
  MB); Pixel Data re-encapsulated into hostile fragments (offset tables pointing anywhere,
  frame counts up to 10^9) under a compressed transfer syntax.
"""

from __future__ import annotations

import copy
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from tests.deflate_bombs import CHUNK, deflated_bytes

Mutation = Callable[[Dataset, random.Random], Dataset]
ByteMutation = Callable[[bytes, random.Random, bool, bool], bytes]


@dataclass(frozen=True)
class Case:
    index: int
    seed_name: str
    mutation: str
    data: bytes  # a whole Part 10 file
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str

    def write(self, directory: Path) -> Path:
        path = directory / f"{self.index:05d}_{self.mutation}.dcm"
        path.write_bytes(self.data)
        return path


# --- dataset-level mutations ---------------------------------------------------------------

_ABSURD_INTS = [0, 1, 2, 3, 7, 65535, 65534, 40000, 32768]
_ABSURD_FRAMES = ["0", "-1", "1000000000", "2147483647", "99999999", "1.5", "abc", "", "3"]


def absurd_dimensions(ds: Dataset, rng: random.Random) -> Dataset:
    for keyword in rng.sample(["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"], 2):
        if keyword == "NumberOfFrames":
            ds.NumberOfFrames = rng.choice(_ABSURD_FRAMES) or None
        elif keyword == "SamplesPerPixel":
            ds.SamplesPerPixel = rng.choice([0, 2, 3, 4, 255])
        else:
            setattr(ds, keyword, rng.choice(_ABSURD_INTS))
    return ds


def absurd_bits(ds: Dataset, rng: random.Random) -> Dataset:
    ds.BitsAllocated = rng.choice([0, 1, 7, 12, 16, 32, 64, 255])
    ds.BitsStored = rng.choice([0, 1, 16, 33, 255, int(ds.BitsAllocated)])
    ds.HighBit = rng.choice([0, 255, int(ds.BitsStored) - 1])
    ds.PixelRepresentation = rng.choice([0, 1, 2])
    return ds


def pixel_data_damage(ds: Dataset, rng: random.Random) -> Dataset:
    choice = rng.randrange(5)
    if choice == 0:
        del ds.PixelData
    elif choice == 1:
        ds.PixelData = b""
    elif choice == 2:
        data = bytes(ds.PixelData)
        ds.PixelData = data[: rng.randrange(1, max(2, len(data)))]
    elif choice == 3:
        ds.PixelData = bytes(ds.PixelData) + b"\x00" * rng.randrange(1, 4096)
    else:
        ds.PixelData = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 512)))
    return ds


def bad_vrs(ds: Dataset, rng: random.Random) -> Dataset:
    """Elements re-declared with the wrong VR or values that do not fit theirs."""
    garbage = [b"\xff\xfe\x00abc", b"-1", b"1e309", b"\x00" * 9, "Ω".encode() * 5, b"\\\\\\"]
    for keyword, vr in rng.sample(
        [
            ("Rows", "UL"),
            ("Columns", "SS"),
            ("PhotometricInterpretation", "OB"),
            ("PixelRepresentation", "DS"),
            ("BitsAllocated", "FD"),
            ("NumberOfFrames", "US"),
            ("ImageLaterality", "SQ"),
            ("Modality", "UN"),
            ("SOPClassUID", "LO"),
            ("PixelSpacing", "AT"),
        ],
        3,
    ):
        tag = Tag(keyword)
        value = rng.choice(garbage)
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # type: ignore[assignment]
    return ds


def garbage_values(ds: Dataset, rng: random.Random) -> Dataset:
    ds.PhotometricInterpretation = rng.choice(
        ["", "MONOCHROME3", "YBR_PARTIAL_420", "RGB", "X" * 16]
    )
    ds.Manufacturer = "\x00" * rng.randrange(1, 64)
    ds.add(DataElement(0x00280030, "DS", ["nan", "inf"]))  # PixelSpacing
    ds.add(DataElement(0x00200037, "DS", ["1e400"] * 6))  # ImageOrientationPatient
    ds.add(DataElement(0x00200032, "DS", ["-inf", "0", "nan"]))  # ImagePositionPatient
    return ds


def hostile_regions(ds: Dataset, rng: random.Random) -> Dataset:
    items = []
    for _ in range(rng.choice([1, 2, 50])):
        region = Dataset()
        region.RegionSpatialFormat = rng.choice([1, 0, 65535])
        region.RegionDataType = 1
        region.RegionFlags = 0
        region.RegionLocationMinX0 = rng.choice([0, 4294967295, 100])
        region.RegionLocationMinY0 = rng.choice([0, 4294967295, 50])
        region.RegionLocationMaxX1 = rng.choice([0, 4294967295, 10])
        region.RegionLocationMaxY1 = rng.choice([0, 4294967295, 5])
        region.PhysicalUnitsXDirection = rng.choice([3, 0, 65535])
        region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX = rng.choice([0.0, -0.0, 1e308, float("nan"), float("inf"), 0.01])
        region.PhysicalDeltaY = rng.choice([0.0, 1e-308, float("-inf"), 0.01])
        if rng.random() < 0.3:
            del region.RegionLocationMaxX1
        items.append(region)
    ds.SequenceOfUltrasoundRegions = Sequence(items)
    return ds


def syntax_mismatch(ds: Dataset, rng: random.Random) -> Dataset:
    """File meta claims a compressed syntax the pixel data is not in (or vice versa)."""
    ds.file_meta.TransferSyntaxUID = rng.choice(
        [RLELossless, "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.3.4.5"]
    )
    return ds


def hostile_encapsulation(ds: Dataset, rng: random.Random) -> Dataset:
    """Pixel Data as fragments of junk under a compressed syntax, with a lying offset table."""
    frames = rng.choice([1, 2, 3, 1000, 1_000_000_000])
    fragments = [
        bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 2, 17, 600])))
        for _ in range(rng.choice([1, 2, 3]))
    ]
    data = bytearray(encapsulate([f + b"\0" * (len(f) % 2) for f in fragments], has_bot=True))
    if rng.random() < 0.5 and len(data) >= 12:  # first offset-table entry points anywhere
        data[8:12] = struct.pack("<I", rng.choice([0xFFFFFFF0, 7, 1 << 30]))
    ds.PixelData = bytes(data)
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.NumberOfFrames = frames
    ds.file_meta.TransferSyntaxUID = rng.choice(
        [RLELossless, JPEGBaseline8Bit, JPEGLSLossless, JPEG2000Lossless]
    )
    return ds


DATASET_MUTATIONS: dict[str, Mutation] = {
    "hostile_encapsulation": hostile_encapsulation,
    "absurd_dimensions": absurd_dimensions,
    "absurd_bits": absurd_bits,
    "pixel_data_damage": pixel_data_damage,
    "bad_vrs": bad_vrs,
    "garbage_values": garbage_values,
    "hostile_regions": hostile_regions,
    "syntax_mismatch": syntax_mismatch,
}


# --- byte-level mutations (on the dataset after the file meta) --------------------------------


def truncate(body: bytes, rng: random.Random, implicit: bool, little: bool) -> bytes:
    return body[: rng.randrange(0, max(1, len(body)))]


def byte_flips(body: bytes, rng: random.Random, implicit: bool, little: bool) -> bytes:
    data = bytearray(body)
    # Mostly in the header part, where a flip changes structure rather than a pixel.
    limit = min(len(data), rng.choice([512, 2048, len(data)]))
    for _ in range(rng.randrange(1, 24)):
        data[rng.randrange(limit)] ^= 1 << rng.randrange(8)
    return bytes(data)


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}


def _element_offsets(body: bytes, implicit: bool, little: bool) -> list[tuple[int, int, int]]:
    """(offset of the length field, its size, value) of each top-level element, by a walk."""
    order = "<" if little else ">"
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos + 8 <= len(body):
        if implicit:
            (length,) = struct.unpack(order + "I", body[pos + 4 : pos + 8])
            out.append((pos + 4, 4, length))
            head = 8
        else:
            vr = body[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > len(body):
                    break
                (length,) = struct.unpack(order + "I", body[pos + 8 : pos + 12])
                out.append((pos + 8, 4, length))
                head = 12
            else:
                (length,) = struct.unpack(order + "H", body[pos + 6 : pos + 8])
                out.append((pos + 6, 2, length))
                head = 8
        if length == 0xFFFFFFFF:
            break  # undefined length: stop the walk here
        pos += head + length
    return out


def wrong_lengths(body: bytes, rng: random.Random, implicit: bool, little: bool) -> bytes:
    offsets = _element_offsets(body, implicit, little)
    if not offsets:
        return truncate(body, rng, implicit, little)
    data = bytearray(body)
    order = "<" if little else ">"
    for offset, size, value in rng.sample(offsets, min(len(offsets), rng.randrange(1, 4))):
        maximum = 0xFFFF if size == 2 else 0xFFFFFFFF
        new = rng.choice(
            [0, 1, value + 1, max(0, value - 2), value + 7, maximum, maximum - 1, value * 16 + 3]
        )
        data[offset : offset + size] = struct.pack(
            order + ("H" if size == 2 else "I"), new & maximum
        )
    return bytes(data)


def deep_sequence(body: bytes, rng: random.Random, implicit: bool, little: bool) -> bytes:
    """Prepend a Referenced Image Sequence nested hundreds of items deep (undefined lengths).

    Written as bytes: pydicom's writer takes exponential time on deep defined-length nesting.
    """
    order = "<" if little else ">"
    depth = rng.choice([20, 100, 300, 1000, 5000])

    def tag(group: int, element: int) -> bytes:
        return struct.pack(order + "HH", group, element)

    undefined = struct.pack(order + "I", 0xFFFFFFFF)
    seq_head = tag(0x0008, 0x1140) + (undefined if implicit else b"SQ\x00\x00" + undefined)
    item_head = tag(0xFFFE, 0xE000) + undefined
    item_end = tag(0xFFFE, 0xE00D) + b"\x00" * 4
    seq_end = tag(0xFFFE, 0xE0DD) + b"\x00" * 4
    value = b"X "
    leaf = tag(0x0008, 0x0100) + (
        struct.pack(order + "I", 2) if implicit else b"SH" + struct.pack(order + "H", 2)
    )
    nested = (seq_head + item_head) * depth + leaf + value + (item_end + seq_end) * depth
    if rng.random() < 0.3:  # and sometimes never closed
        nested = nested[: len(nested) - rng.randrange(1, 8 * depth)]
        return nested
    return nested + body


BYTE_MUTATIONS: dict[str, ByteMutation] = {
    "truncate": truncate,
    "byte_flips": byte_flips,
    "wrong_lengths": wrong_lengths,
    "deep_sequence": deep_sequence,
}
#: Whole-file mutations: the data set (any dataset mutation first, sometimes) deflated.
DEFLATE_MUTATIONS = ("deflated", "deflate_bomb")
ALL_MUTATIONS = [*DATASET_MUTATIONS, *BYTE_MUTATIONS, *DEFLATE_MUTATIONS]
_BOMB_BYTES = [64 * CHUNK, 300 * CHUNK, 1024 * CHUNK, 4095 * CHUNK]


def _deflated_case(ds: Dataset, mutation: str, rng: random.Random) -> bytes:
    """`ds` (after a random dataset mutation half the time) as a deflated Part 10 file."""
    plain = copy.deepcopy(ds)
    if rng.random() < 0.5:
        name = rng.choice(sorted(DATASET_MUTATIONS))
        try:
            return _deflate(DATASET_MUTATIONS[name](ds, rng), mutation, rng)
        except Exception:  # noqa: BLE001 - pydicom would not write it: deflate the plain copy
            pass
    return _deflate(plain, mutation, rng)


def _deflate(ds: Dataset, mutation: str, rng: random.Random) -> bytes:
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        del ds.PixelData  # encapsulated data cannot be deflated (PS3.5 A.5)
    if mutation == "deflate_bomb":
        # A private element after Pixel Data, or Pixel Data itself, of many zero bytes.
        big_tag, vr = rng.choice([(0x7FE10010, "OB"), (0x7FE00010, "OW")])
        if big_tag == 0x7FE00010 and "PixelData" in ds:
            del ds.PixelData
        return deflated_bytes(ds, big_tag, rng.choice(_BOMB_BYTES), vr)
    return deflated_bytes(ds, 0x7FE10010, 2 * rng.randrange(0, 64))


def _renamed(ds: Dataset) -> Dataset:
    """A copy with fresh Study, Series and SOP Instance UIDs (each case its own study)."""
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _encode(ds: Dataset, body_syntax: UID) -> tuple[bytes, bytes]:
    """(preamble + file meta, dataset body): the body in `body_syntax`, whatever the meta says."""
    meta = DicomBytesIO()
    meta.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    if "PixelData" in ds and not bytes(ds.PixelData[:4]).startswith(b"\xfe\xff\x00\xe0"):
        ds["PixelData"].is_undefined_length = False  # damaged: no longer encapsulated
    body = DicomBytesIO()
    body.is_little_endian = body_syntax.is_little_endian
    body.is_implicit_VR = body_syntax.is_implicit_VR
    write_dataset(body, ds)
    return meta.getvalue(), body.getvalue()


def cases(seeds: dict[str, Path], count: int, seed: int = 1234) -> Iterator[Case]:
    """`count` deterministic cases over `seeds` (name → file), mutations in turn."""
    rng = random.Random(seed)
    loaded = {name: dcmread(path) for name, path in seeds.items()}
    names = sorted(loaded)
    for index in range(count):
        name = names[index % len(names)]
        mutation = ALL_MUTATIONS[index % len(ALL_MUTATIONS)]
        case_rng = random.Random(rng.getrandbits(64))
        ds = _renamed(loaded[name])
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        if mutation in DEFLATE_MUTATIONS:
            data = _deflated_case(ds, mutation, case_rng)
            yield Case(
                index,
                name,
                mutation,
                data,
                str(ds.file_meta.MediaStorageSOPClassUID),
                str(ds.file_meta.MediaStorageSOPInstanceUID),
                str(DeflatedExplicitVRLittleEndian),
            )
            continue
        if mutation in DATASET_MUTATIONS:
            try:
                ds = DATASET_MUTATIONS[mutation](ds, case_rng)
                head, body = _encode(ds, syntax)
            except Exception:  # noqa: BLE001 - pydicom would not write it: truncate instead
                ds = _renamed(loaded[name])
                head, body = _encode(ds, syntax)
                body = truncate(body, case_rng, syntax.is_implicit_VR, syntax.is_little_endian)
        else:
            head, body = _encode(ds, syntax)
            body = BYTE_MUTATIONS[mutation](
                body, case_rng, syntax.is_implicit_VR, syntax.is_little_endian
            )
        yield Case(
            index,
            name,
            mutation,
            head + body,
            str(ds.file_meta.MediaStorageSOPClassUID),
            str(ds.file_meta.MediaStorageSOPInstanceUID),
            str(ds.file_meta.TransferSyntaxUID),
        )
