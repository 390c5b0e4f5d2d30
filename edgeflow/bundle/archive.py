"""The bundle container: a plain zip archive in ONE canonical form, written and read here.

Canonical means: entries in a fixed order (``manifest.json`` first, then ``files/...`` sorted,
then ``signature.json`` when signed), deflate-compressed, the 1980-01-01 timestamp, mode 0644,
no extra fields, no zip64, the archive comment :data:`COMMENT`. Any zip tool can list and
unpack a bundle, and :func:`read_entries` accepts a file only when re-serialising what it
read gives back exactly the file's bytes: so every byte of a bundle is either a header this
module would write (checked by that comparison) or compressed data (checked by its CRC and,
by the caller, by the manifest's sha256). One flipped byte anywhere is refused.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from edgeflow.bundle.errors import BundleError

COMMENT = b"edgeflow bundle 1"
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
FILES_PREFIX = "files/"
#: limits that keep a damaged or hostile bundle from exhausting memory (a "zip bomb")
MAX_BUNDLE_BYTES = 512 * 1024 * 1024
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # signature .. extra length: 30 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
_END = struct.Struct("<IHHHHIIH")  # 22 bytes
_LOCAL_SIG, _CENTRAL_SIG, _END_SIG = 0x04034B50, 0x02014B50, 0x06054B50
_VERSION_NEEDED = 20
_MADE_BY = (3 << 8) | 20  # unix, zip 2.0
_FLAGS = 0x0800  # names are UTF-8
_DEFLATED = 8
_DOS_TIME, _DOS_DATE = 0, (0 << 9) | (1 << 5) | 1  # 1980-01-01 00:00:00
_MODE = (0o100644 << 16) & 0xFFFFFFFF
#: the first bytes of every bundle: a zip local header whose entry is the manifest
MAGIC_NAME_OFFSET = _LOCAL.size


@dataclass(frozen=True)
class Entry:
    """One archive member: its name, its compressed bytes, their CRC-32 and unpacked size."""

    name: str
    raw: bytes
    crc: int
    size: int


def pack(name: str, data: bytes) -> Entry:
    """``data`` compressed (deflate, level 6: deterministic for one zlib build)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -15, 8)
    raw = comp.compress(data) + comp.flush()
    return Entry(name, raw, zlib.crc32(data) & 0xFFFFFFFF, len(data))


def unpack(entry: Entry, where: str = "the bundle") -> bytes:
    """The entry's content; BundleError when its compressed bytes are damaged."""
    damaged = BundleError(
        f"{where}: {entry.name} is damaged (its compressed bytes do not unpack to what its "
        "header says); the bundle was altered or truncated: copy it again or rebuild it"
    )
    if entry.size > MAX_UNPACKED_BYTES:
        raise BundleError(
            f"{where}: {entry.name} claims {entry.size} bytes, more than the "
            f"{MAX_UNPACKED_BYTES} a bundle may hold; the bundle is damaged or hostile"
        )
    dec = zlib.decompressobj(-15)
    try:
        data = dec.decompress(entry.raw, entry.size + 1)
    except zlib.error:
        raise damaged from None
    if len(data) != entry.size or not dec.eof or dec.unused_data or dec.unconsumed_tail:
        raise damaged
    if zlib.crc32(data) & 0xFFFFFFFF != entry.crc:
        raise damaged
    return data


def order(entries: list[Entry]) -> list[Entry]:
    """The canonical order: the manifest, the files by name, the signature."""

    def rank(e: Entry) -> tuple[int, str]:
        return (0 if e.name == MANIFEST else 2 if e.name == SIGNATURE else 1, e.name)

    return sorted(entries, key=rank)


def serialize(entries: list[Entry]) -> bytes:
    """The canonical archive holding ``entries`` (in :func:`order`)."""
    return _layout(entries)[0]


def _layout(entries: list[Entry]) -> tuple[bytes, list[tuple[int, int, str]]]:
    """The canonical archive and where each part of it lies: (start, end, what)."""
    out = bytearray()
    central = bytearray()
    parts: list[tuple[int, int, str]] = []
    ordered = order(entries)
    offsets = []
    for e in ordered:
        name = e.name.encode()
        offset = len(out)
        offsets.append(offset)
        out += _LOCAL.pack(
            _LOCAL_SIG, _VERSION_NEEDED, _FLAGS, _DEFLATED, _DOS_TIME, _DOS_DATE,
            e.crc, len(e.raw), e.size, len(name), 0,
        )  # fmt: skip
        out += name
        parts.append((offset, len(out), f"the header of {e.name}"))
        parts.append((len(out), len(out) + len(e.raw), f"the data of {e.name}"))
        out += e.raw
    start = len(out)
    for e, offset in zip(ordered, offsets, strict=True):
        name = e.name.encode()
        at = start + len(central)
        central += _CENTRAL.pack(
            _CENTRAL_SIG, _MADE_BY, _VERSION_NEEDED, _FLAGS, _DEFLATED, _DOS_TIME, _DOS_DATE,
            e.crc, len(e.raw), e.size, len(name), 0, 0, 0, 0, _MODE, offset,
        )  # fmt: skip
        central += name
        parts.append((at, start + len(central), f"the directory record of {e.name}"))
    out += central
    end = len(out)
    out += _END.pack(_END_SIG, 0, 0, len(ordered), len(ordered), len(central), start, len(COMMENT))
    out += COMMENT
    parts.append((end, len(out), "the archive's end record"))
    if len(out) > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"the bundle would be {len(out)} bytes, more than the {MAX_BUNDLE_BYTES} allowed; "
            "leave large data out of it (--include) and ship it separately"
        )
    return bytes(out), parts


def looks_like_bundle(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts like a bundle: a zip local header
    whose entry is ``manifest.json``."""
    name = MANIFEST.encode()
    return (
        len(head) >= _LOCAL.size + len(name)
        and head[:4] == b"PK\x03\x04"
        and head[_LOCAL.size : _LOCAL.size + len(name)] == name
    )


def read_entries(path: Path) -> list[Entry]:
    """The entries of the bundle at ``path``, refused (BundleError, one line) unless the
    file is exactly the canonical archive of those entries."""
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise BundleError(
                f"{path} is {size} bytes, more than the {MAX_BUNDLE_BYTES} a bundle may be; "
                "it is not a bundle edgeflow wrote"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"bundle {path} does not exist; give the path to a .efb file") from None
    except IsADirectoryError:
        raise BundleError(f"{path} is a directory; give the path to a .efb bundle file") from None
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror or exc}") from None
    if not looks_like_bundle(data):
        raise BundleError(
            f"{path} is not an edgeflow bundle (no manifest.json at its start); build one "
            "with: edgeflow bundle build FLOW"
        )
    entries: list[Entry] = []
    pos = 0
    while data[pos : pos + 4] == b"PK\x03\x04":
        if pos + _LOCAL.size > len(data):
            raise _damaged(path, pos)
        fields = _LOCAL.unpack_from(data, pos)
        crc, csize, usize, nlen, xlen = fields[6:11]
        start = pos + _LOCAL.size + nlen + xlen
        end = start + csize
        if end > len(data):
            raise _damaged(path, pos)
        try:
            name = data[pos + _LOCAL.size : pos + _LOCAL.size + nlen].decode()
        except UnicodeDecodeError:
            raise _damaged(path, pos) from None
        entries.append(Entry(name, data[start:end], crc, usize))
        pos = end
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise BundleError(f"{path} holds an entry twice; it is damaged or was altered: rebuild it")
    canonical, parts = _layout(entries)
    if canonical != data:
        at = next(
            (i for i, (a, b) in enumerate(zip(canonical, data, strict=False)) if a != b),
            min(len(canonical), len(data)),
        )
        where = next((what for a, b, what in parts if a <= at < b), "its end")
        raise BundleError(
            f"{path} is damaged or was altered at byte {at} (in {where}): it is not the "
            "archive edgeflow writes for its contents; copy it again or rebuild it with "
            "edgeflow bundle build"
        )
    return entries


def _damaged(path: Path, at: int) -> BundleError:
    return BundleError(
        f"{path} is damaged or truncated (entry header at byte {at} is broken); copy it again "
        "or rebuild it with edgeflow bundle build"
    )
