"""Integrity of recording files: damage is refused, never read as other figures.

Two checks cover every byte a reader uses:
- Parquet page checksums (CRC-32 of every data and dictionary page, written by the writers,
  verified by every read: `pyarrow` `write_page_checksum` / `page_checksum_verification`);
- a SHA-256 of the footer (the Thrift `FileMetaData`: schema, row groups, column chunk offsets and
  statistics, the key-value metadata with the recording's JSON), stored in the footer itself under
  DIGEST_KEY, computed with its own value set to 64 '0's. Writers `seal` a file after closing it;
  readers `verify_footer` before trusting anything in it.

The recording's JSON says `"integrity": {"pages": "crc32", "footer": "sha256"}`, so a footer whose
digest entry itself was damaged is refused too; files without that key (written before these
checks) are read as before.
"""

from __future__ import annotations

import hashlib
import os
import struct

from kmemleak_offline.format import stitch

DIGEST_KEY = b"kmemleak_offline.footer_sha256"
PLACEHOLDER = b"0" * 64
INTEGRITY = {"pages": "crc32", "footer": "sha256"}
_VALUE = b"\x18\x40"  # KeyValue field 2 (binary), 64 bytes: what follows our key in the footer


class IntegrityError(ValueError):
    """A footer that does not match its digest (or lost it); one-line message."""


def _locate(footer: bytes) -> int | None:
    """Offset of the digest value in the footer bytes, None when the footer has none."""
    i = footer.rfind(DIGEST_KEY + _VALUE)
    if i < 0 or i + len(DIGEST_KEY) + 2 + 64 > len(footer):
        return None
    return i + len(DIGEST_KEY) + 2


def _digest(footer: bytes, pos: int) -> bytes:
    return hashlib.sha256(footer[:pos] + PLACEHOLDER + footer[pos + 64:]).hexdigest().encode()


def seal(path: str | os.PathLike) -> None:
    """Add (or renew) the footer digest of a closed Parquet file, in place."""
    fmd, start = stitch.read_footer(path)
    stitch.set_kv(fmd, {DIGEST_KEY: PLACEHOLDER})
    footer = stitch.encode(fmd)
    pos = _locate(footer)
    assert pos is not None
    footer = footer[:pos] + _digest(footer, pos) + footer[pos + 64:]
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(footer + struct.pack("<I", len(footer)) + stitch.MAGIC)
        f.truncate()


def footer_bytes(path: str | os.PathLike) -> bytes:
    """The raw footer of a Parquet file (IntegrityError when the file cannot hold one)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size < 12:
            raise IntegrityError("too short for a Parquet file")
        f.seek(size - 8)
        tail = f.read(8)
        (flen,) = struct.unpack("<I", tail[:4])
        if tail[4:] != stitch.MAGIC or flen > size - 12:
            raise IntegrityError("no Parquet footer at its end (truncated?)")
        f.seek(size - 8 - flen)
        return f.read(flen)


def verify_footer(path: str | os.PathLike, required: bool) -> bool:
    """True when the footer carries a digest and matches it, False when it carries none and none
    is `required`; IntegrityError otherwise."""
    footer = footer_bytes(path)
    pos = _locate(footer)
    if pos is None:
        if required:
            raise IntegrityError("its footer checksum is missing (damaged footer)")
        return False
    if footer[pos:pos + 64] != _digest(footer, pos):
        raise IntegrityError("footer checksum mismatch: the file is damaged")
    return True


# parquet.thrift PageHeader: 1 type, 3 compressed_page_size, 4 crc, 5 data_page_header (1 num_values),
# 8 data_page_header_v2 (1 num_values); page types 0 DATA_PAGE, 3 DATA_PAGE_V2
_DATA_PAGES = {0: 5, 3: 8}
_DICTIONARY_PAGE = 2  # its header: field 7


def check_pages(f, start: int, size: int, num_values: int, crcs: list[int]) -> str | None:
    """Walk the page headers of one column chunk (`size` bytes at `start` of the open binary
    file `f`): they must tile the chunk, each must carry the header of its page type, and their
    values add up to the footer's `num_values`. `crcs` counts [pages with a CRC, pages without]:
    a writer checksums every page or none, so a mix means a damaged header dropped a CRC (its
    page would then go unchecked). A page CRC covers its data, not its header nor which chunk it
    belongs to: a whole valid page copied over another passes its CRC but not this. Returns
    what is wrong, or None."""
    pos, end, values = start, start + size, 0
    while pos < end:
        window = 1 << 14
        while True:
            f.seek(pos)
            head = f.read(min(window, end - pos))
            try:
                r = stitch._Reader(head)
                fields = {fid: v for fid, _, v in r.struct()}
                break
            except (IndexError, stitch.StitchError, RecursionError, ValueError, TypeError):
                if window >= end - pos or window >= 1 << 22:
                    return f"an unreadable page header at byte {pos}"
                window <<= 2
        length, kind = fields.get(3), fields.get(1)
        if not isinstance(length, int) or length < 0 or not isinstance(kind, int):
            return f"a damaged page header at byte {pos}"
        crcs[0 if isinstance(fields.get(4), int) else 1] += 1
        if kind == _DICTIONARY_PAGE and not isinstance(fields.get(7), list):
            return f"a damaged page header at byte {pos}"
        sub = _DATA_PAGES.get(kind)
        if sub is not None:
            inner = fields.get(sub)
            if not isinstance(inner, list) or not all(isinstance(f, list) and len(f) == 3
                                                      for f in inner):
                return f"a damaged page header at byte {pos}"
            n = next((v for fid, _, v in inner if fid == 1), None)
            if not isinstance(n, int) or n < 0:
                return f"a damaged page header at byte {pos}"
            values += n
        pos += r.pos + length
    if pos != end:
        return f"pages that end at byte {pos}, not {end}"
    if values != num_values:
        return f"pages holding {values} values, the footer says {num_values}"
    return None


def claims(meta: dict) -> bool:
    """The recording's JSON says its writer sealed it."""
    integ = meta.get("integrity")
    return isinstance(integ, dict) and integ.get("footer") == "sha256"


__all__ = ["DIGEST_KEY", "INTEGRITY", "IntegrityError", "claims", "seal",
           "verify_footer"]
