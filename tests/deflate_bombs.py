"""Deflate bombs built in code: small Deflated Explicit VR Little Endian files that inflate huge.

The deflate stream is assembled from independent blocks (each compressor flushed with
``Z_FULL_FLUSH``, so no block refers back to another): the encoded header, then one
compressed block of :data:`CHUNK` zero bytes repeated, then an empty final block. Building a
1 GiB bomb therefore takes milliseconds and about 1 MB of memory, never the inflated size.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

CHUNK = 1024 * 1024
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
GIB = 1024 * 1024 * 1024


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def deflated_bytes(ds: Dataset, big_tag: int, big_length: int, vr: str = "OB") -> bytes:
    """Part 10 bytes of ``ds`` plus a last element ``big_tag`` of ``big_length`` zero bytes.

    ``big_length`` must be a multiple of :data:`CHUNK` (or below it); ``ds`` must have a
    ``file_meta`` and only elements whose tags sort before ``big_tag``.
    """
    if big_length > CHUNK and big_length % CHUNK:
        raise ValueError("big_length must be a multiple of CHUNK")
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    tag = Tag(big_tag)
    header = struct.pack("<HH2sHI", tag.group, tag.element, vr.encode(), 0, big_length)
    out = BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta_io = DicomBytesIO()
    meta_io.is_little_endian, meta_io.is_implicit_VR = True, False
    write_file_meta_info(meta_io, meta, enforce_standard=True)
    out.write(meta_io.getvalue())
    out.write(_raw_deflate(body.getvalue() + header))
    if big_length >= CHUNK:
        out.write(_raw_deflate(bytes(CHUNK)) * (big_length // CHUNK))
    else:
        out.write(_raw_deflate(bytes(big_length)))
    out.write(zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH))
    return out.getvalue()


def base_dataset(sop_class_uid: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def ct_bomb(inflated: int = GIB) -> bytes:
    """A CT object whose Pixel Data is ``inflated`` zero bytes (about 1 MB per GiB)."""
    ds = base_dataset(CT_IMAGE_STORAGE, "CT")
    ds.Rows = ds.Columns = 512
    return deflated_bytes(ds, 0x7FE00010, inflated)


def us_multiframe_bomb(
    frames: int = 8, rows: int = 4096, columns: int = 4096, samples: int = 3
) -> bytes:
    """An Ultrasound Multi-frame Image of black 8 bit frames (RGB when ``samples`` is 3)."""
    ds = base_dataset(US_MULTIFRAME_STORAGE, "US")
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    return deflated_bytes(ds, 0x7FE00010, frames * rows * columns * samples)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
