"""Deflate bombs: bound what a Deflated Explicit VR Little Endian file inflates to.

pydicom inflates a deflated data set whole, in memory, with ``zlib.decompress``: a 1 MB
file can become 1 GiB (or 1 TiB). Before any pydicom read of untrusted bytes we find where
the deflated data set starts ourselves (preamble, ``DICM``, the group 0002 File Meta
elements, any group 0000 command elements: the same steps as pydicom's reader) and inflate
it in a streaming way, :data:`CHUNK` bytes at a time, counting and discarding, so the check
itself never holds more than a chunk. Past the limit the object is refused as ``too_large``.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache
from io import BytesIO
from os import PathLike, stat
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_io.errors import UnsupportedObjectError

__all__ = [
    "CHUNK",
    "MAX_INFLATED_BYTES",
    "InflateLimitError",
    "check_inflated_size",
    "deflated_data_set_offset",
]

_MIB = 1024 * 1024
#: Default decompressed-size limit of one deflated object (the service's
#: ``dicom.max_inflated_mb``); the worker side reads with this one.
MAX_INFLATED_BYTES = 256 * _MIB
#: Input read and output produced per inflation step.
CHUNK = _MIB
_PREAMBLE = 128
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_LONG_VRS |= {b"UV"}
_TRANSFER_SYNTAX_TAG = (0x0002, 0x0010)
_UNDEFINED = 0xFFFFFFFF


class InflateLimitError(UnsupportedObjectError):
    """The deflated data set inflates beyond the limit (code ``too_large``)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__("too_large", f"deflated data set inflates beyond {_mib(limit_bytes)} MiB")


def _mib(n: int) -> str:
    return f"{n / _MIB:g}"


def _read_exact(fp: BinaryIO, n: int) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise UnsupportedObjectError("unreadable", "file meta information truncated")
    return data


def _skip_group(fp: BinaryIO, group: int) -> bytes | None:
    """Read past the elements of ``group``; return the Transfer Syntax UID value if seen.

    As pydicom's reader: the first element decides the encoding (two capitals after the tag:
    explicit VR, else implicit VR throughout). In explicit VR, per element, a long VR has a
    4-byte length, two bytes that cannot be a VR (not ``AA``..``ZZ``) mean that element is
    implicit VR (4-byte length), and any other VR, known or not, has a 2-byte length.
    Undefined lengths (sequences) have no place in these groups: unreadable.
    """
    syntax = None
    implicit: bool | None = None
    while True:
        start = fp.tell()
        head = fp.read(8)
        if len(head) < 8:
            fp.seek(start)
            return syntax
        tag_group, element = struct.unpack("<HH", head[:4])
        if tag_group != group:
            fp.seek(start)
            return syntax
        vr = head[4:6]
        if implicit is None:
            implicit = not all(0x41 <= c <= 0x5A for c in vr)
        if implicit or not (b"AA" <= vr <= b"ZZ"):
            (length,) = struct.unpack("<I", head[4:8])
        elif vr in _LONG_VRS:
            (length,) = struct.unpack("<I", _read_exact(fp, 4))
        else:
            (length,) = struct.unpack("<H", head[6:8])
        if length == _UNDEFINED:
            raise UnsupportedObjectError("unreadable", f"undefined length in group {group:04X}")
        if (tag_group, element) == _TRANSFER_SYNTAX_TAG:
            syntax = _read_exact(fp, min(length, 256))
            fp.seek(length - len(syntax), 1)
        else:
            fp.seek(length, 1)


def deflated_data_set_offset(fp: BinaryIO) -> int | None:
    """Offset of the deflated data set in a Part 10 stream, or None when it is not deflated.

    None also for a stream without the ``DICM`` prefix: pydicom (without ``force``) refuses
    it before inflating anything. Leaves ``fp`` at an unspecified position.
    """
    fp.seek(0)
    if fp.read(_PREAMBLE + 4)[_PREAMBLE:] != b"DICM":
        return None
    syntax = _skip_group(fp, 0x0002)
    _skip_group(fp, 0x0000)  # a command set, as pydicom also skips
    if syntax is None:
        return None
    offset = fp.tell()
    if not fp.read(1):
        return None  # at (or, past a too long element, beyond) the end: pydicom inflates nothing
    value = syntax.decode("ascii", "replace").strip("\0 ")
    return offset if value == DeflatedExplicitVRLittleEndian else None


def _inflated_size(fp: BinaryIO, offset: int, limit_bytes: int) -> int:
    fp.seek(offset)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            pending = fp.read(CHUNK)
            if not pending:
                break  # truncated: pydicom's zlib.decompress refuses it too
            while True:
                out = inflater.decompress(pending, CHUNK)
                total += len(out)
                if total > limit_bytes:
                    raise InflateLimitError(limit_bytes)
                pending = inflater.unconsumed_tail
                if not pending and len(out) < CHUNK:
                    break
    except zlib.error as exc:
        raise UnsupportedObjectError("unreadable", "corrupt deflate stream") from exc
    if not inflater.eof:
        raise UnsupportedObjectError("unreadable", "truncated deflate stream")
    return total


def _check_stream(fp: BinaryIO, limit_bytes: int) -> int | None:
    offset = deflated_data_set_offset(fp)
    return None if offset is None else _inflated_size(fp, offset, limit_bytes)


@lru_cache(maxsize=256)
def _check_file(
    path: str, identity: tuple[int, int, int, int], limit_bytes: int
) -> int | tuple[str, str] | None:
    """The size, or the refusal: a file is read several times per job (info, frames, header).

    ``identity`` (device, inode, size, mtime) makes a rewritten file a new cache entry.
    """
    try:
        with open(path, "rb") as fp:
            return _check_stream(fp, limit_bytes)
    except UnsupportedObjectError as exc:
        return exc.code, exc.detail


def check_inflated_size(
    source: str | PathLike[str] | bytes | bytearray | memoryview | BinaryIO,
    limit_bytes: int = MAX_INFLATED_BYTES,
) -> int | None:
    """Refuse a deflated object that inflates beyond ``limit_bytes``, before pydicom reads it.

    Parameters
    ----------
    source: path, bytes or binary file
        A DICOM Part 10 file or its bytes (a file object is read from its start).
    limit_bytes: int
        Most bytes the deflated data set may inflate to.

    Returns
    -------
    int | None
        The inflated size of the data set, or None when the object is not deflated.

    Raises
    ------
    InflateLimitError
        ``too_large``: inflates beyond ``limit_bytes``.
    UnsupportedObjectError
        ``unreadable``: the file meta or the deflate stream is corrupt or truncated.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _check_stream(BytesIO(source), limit_bytes)
    if isinstance(source, (str, PathLike)):
        path = str(Path(source))
        try:
            st = stat(path)
        except OSError as exc:
            raise UnsupportedObjectError("unreadable", type(exc).__name__) from exc
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        try:
            result = _check_file(path, identity, limit_bytes)
        except OSError as exc:  # gone or unreadable between stat and open
            raise UnsupportedObjectError("unreadable", type(exc).__name__) from exc
        if isinstance(result, tuple):  # a fresh exception each time (threads share the cache)
            if result[0] == "too_large":
                raise InflateLimitError(limit_bytes)
            raise UnsupportedObjectError(*result)
        return result
    return _check_stream(source, limit_bytes)
