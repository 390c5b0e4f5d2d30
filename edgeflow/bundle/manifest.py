"""The bundle manifest: what a bundle holds (name, version, edgeflow version, creation time,
entry flow file, every file's sha256), as canonical JSON bytes, and the checks a manifest
read from a bundle must pass before anything in it is trusted."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import orjson

from edgeflow.bundle.errors import BundleError

FORMAT = "edgeflow-bundle/1"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
#: a bundle version: safe as one path component (no '/', never '.' or '..')
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_relpath(rel: str) -> str:
    """``rel`` when it is a relative path that stays inside the directory it is extracted
    to ('/'-separated, no '..', '.', empty parts, backslashes, drive letters or NULs);
    BundleError otherwise."""
    parts = rel.split("/")
    if (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or "\0" in rel
        or _WINDOWS_DRIVE.match(rel)
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise BundleError(
            f"the bundle names the file {rel!r}, a path outside its own directory (absolute "
            "or with '..'); refusing it: the bundle is hostile or damaged, do not use it"
        )
    return rel


def make(
    *,
    name: str,
    version: str,
    edgeflow_version: str,
    created_at: datetime,
    entry: str,
    files: Mapping[str, bytes],
) -> dict[str, Any]:
    """The manifest of a bundle holding ``files`` (relative path -> content)."""
    if created_at.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    stamp = created_at.astimezone(timezone.utc).replace(microsecond=0)
    return {
        "format": FORMAT,
        "name": name,
        "version": version,
        "edgeflow_version": edgeflow_version,
        "created_at": stamp.isoformat().replace("+00:00", "Z"),
        "entry": safe_relpath(entry),
        "files": {safe_relpath(rel): sha256(files[rel]) for rel in sorted(files)},
    }


def dumps(manifest: Mapping[str, Any]) -> bytes:
    """The manifest's canonical bytes (sorted keys, two-space indent, final newline): the
    bytes a signature covers."""
    return orjson.dumps(dict(manifest), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def parse(data: bytes, where: str) -> dict[str, Any]:
    """The manifest in ``data``, checked field by field; BundleError names what is wrong."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BundleError(
            f"{where}: manifest.json is not valid JSON; the bundle is damaged"
        ) from None
    if not isinstance(value, dict):
        raise BundleError(f"{where}: manifest.json is not a JSON object; the bundle is damaged")
    fmt = value.get("format")
    if fmt != FORMAT:
        raise BundleError(
            f"{where}: bundle format {fmt!r} is not {FORMAT!r}; it was made by another "
            "edgeflow version: upgrade edgeflow on this node or rebuild the bundle"
        )
    for key in ("name", "version", "edgeflow_version", "created_at", "entry"):
        if not isinstance(value.get(key), str) or not value[key]:
            raise BundleError(f"{where}: manifest.json has no {key!r}; the bundle is damaged")
    if not VERSION.fullmatch(value["version"]):
        raise BundleError(
            f"{where}: manifest version {value['version']!r} is not a version edgeflow builds "
            "(letters, digits, '.', '_', '+', '-'); the bundle is damaged or hostile"
        )
    if _CONTROL.search(value["name"]) or len(value["name"]) > 200:
        raise BundleError(
            f"{where}: manifest name {value['name'][:40]!r} has control characters or is "
            "too long; the bundle is damaged or hostile"
        )
    files = value.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{where}: manifest.json lists no files; the bundle is damaged")
    for rel, digest in files.items():
        safe_relpath(rel)
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise BundleError(
                f"{where}: manifest.json has no valid sha256 for {rel!r}; the bundle is damaged"
            )
    safe_relpath(value["entry"])
    if value["entry"] not in files:
        raise BundleError(
            f"{where}: the entry flow file {value['entry']!r} is not among the bundle's files; "
            "the bundle is damaged"
        )
    return value
