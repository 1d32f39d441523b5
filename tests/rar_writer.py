"""A minimal RAR 4 writer for test fixtures: files stored uncompressed ("store" method), no solid, no encryption.

No library writes RAR and the ``rar`` tool is not free software, so the tests build their RAR archives with this.
Written from the public RAR 4 format description (technote.txt of RAR 3.x/4.x): a marker block, a main archive
header, one file header (type 0x74) plus data per file, an end-of-archive block. Every header's CRC is the low 16
bits of the CRC-32 of the header from its type byte on; a file's CRC is the CRC-32 of its data.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

MARKER = b"Rar!\x1a\x07\x00"
STORE = 0x30
HOST_UNIX = 3
LONG_BLOCK = 0x8000  # the block has data after its header (ADD_SIZE)
DOS_TIME_2011 = (31 << 25) | (1 << 21) | (1 << 16)  # 2011-01-01 00:00:00 in MS-DOS format


def _block(head_type: int, flags: int, body: bytes) -> bytes:
    header = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header


def rar_bytes(files: dict[str, bytes]) -> bytes:
    """A RAR 4 archive of ``files`` (archive path -> bytes; "/" separates folders)."""
    out = bytearray(MARKER)
    out += _block(0x73, 0, struct.pack("<HI", 0, 0))  # main header: two reserved fields
    for name, data in files.items():
        encoded = name.replace("/", "\\").encode()  # RAR stores DOS-style separators
        body = struct.pack(
            "<IIBIIBBHI",
            len(data),  # packed size
            len(data),  # unpacked size
            HOST_UNIX,
            zlib.crc32(data),
            DOS_TIME_2011,
            20,  # version needed to extract: 2.0
            STORE,
            len(encoded),
            0o100644,  # file attributes: a Unix mode, as HOST_UNIX says
        )
        out += _block(0x74, LONG_BLOCK, body + encoded) + data
    out += _block(0x7B, 0x4000, b"")
    return bytes(out)


def write_rar(path: Path, files: dict[str, bytes]) -> Path:
    path.write_bytes(rar_bytes(files))
    return path
