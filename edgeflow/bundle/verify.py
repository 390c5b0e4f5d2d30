"""Open a bundle: every check before anything in it is used.

:func:`open_bundle` guarantees, when it returns: the file is exactly the canonical archive of
its entries (see :mod:`edgeflow.bundle.archive`), every file unpacks intact and matches the
sha256 the manifest lists for it, the bundle holds no file the manifest does not list and
every path stays inside the directory it is extracted to, and, when trust keys are given
(or a signature is required), the manifest is signed by one of them. The returned
:class:`Bundle` holds the verified bytes, so :meth:`Bundle.extract` writes exactly what was
checked, whatever happens to the file afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeflow.bundle import archive, keys
from edgeflow.bundle import manifest as mf
from edgeflow.bundle.errors import BundleError

TRUST_ENV = "EDGEFLOW_TRUST"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. ``version`` is safe as one path component
    (``[A-Za-z0-9][A-Za-z0-9._+-]*``); ``name`` is free text without control characters:
    sanitise it before using it in a path. ``signed_by`` is the fingerprint of the trusted key that verified
    its signature (None when no trust key was given or it is unsigned); ``signature_key``
    the fingerprint its signature names, checked or not (None when unsigned)."""

    path: Path
    name: str
    version: str
    manifest: dict[str, Any]
    signed_by: str | None
    signature_key: str | None = None
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    manifest_bytes: bytes = field(default=b"", repr=False, compare=False)

    @property
    def entry(self) -> str:
        """The flow file's path inside the bundle."""
        return str(self.manifest["entry"])

    @property
    def digest(self) -> str:
        """sha256 of the manifest (which holds every file's sha256): one id for the contents."""
        return mf.sha256(self.manifest_bytes or mf.dumps(self.manifest))

    def extract(self, dest: Path) -> Path:
        """Write every file under ``dest`` (created 0700, files 0600; other files there are
        left alone) and return the entry flow file's path. Refuses, before writing anything,
        a path that is absolute, has '..' or would leave ``dest`` through a symlink."""
        listed = self.manifest.get("files")
        if not isinstance(listed, dict):
            raise BundleError(f"{self.path}: the manifest lists no files; open it with open_bundle")
        rels = [mf.safe_relpath(str(rel)) for rel in listed]
        mf.safe_relpath(self.entry)
        missing = [rel for rel in rels if rel not in self.files]
        if missing:
            raise BundleError(
                f"{self.path}: no verified contents for {missing[0]!r}; open the bundle with "
                "open_bundle before extracting it"
            )
        try:
            root = dest.resolve()
            for rel in rels:  # checked before anything is written
                _inside(dest, rel, root)
            dest.mkdir(parents=True, exist_ok=True, mode=0o700)
            for rel in sorted(rels):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                _inside(dest, rel, root)
                if target.is_symlink():
                    target.unlink()
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(self.files[rel])
                os.chmod(target, 0o600)
        except OSError as exc:
            raise BundleError(
                f"cannot extract bundle {self.path} into {dest}: {exc.strerror or exc}"
            ) from None
        return dest / self.entry


def _inside(dest: Path, rel: str, root: Path) -> None:
    """Refuse ``rel`` when the part of its directory that exists under ``dest`` resolves
    (through a symbolic link) outside ``dest``."""
    parent = (dest / rel).parent
    while not parent.exists() and parent != dest and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.resolve().is_relative_to(root):
        raise BundleError(
            f"extracting {rel!r} would leave {dest} through a symbolic link; extract into "
            "an empty directory"
        )


def is_bundle(path: Path) -> bool:
    """Whether ``path`` is a bundle by its content (a zip archive starting with the bundle
    manifest), whatever its name. A damaged bundle is still one: open it to learn what is
    wrong."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return archive.looks_like_bundle(head)


def trusted_keys_from_env() -> list[Path]:
    """Public key files named by ``EDGEFLOW_TRUST`` (os.pathsep-separated): a node with it
    set accepts only bundles signed by one of them."""
    value = os.environ.get(TRUST_ENV, "")
    return [Path(p.strip()) for p in value.split(os.pathsep) if p.strip()]


def open_bundle(path: Path, trust: Sequence[Path] = (), require_signature: bool = False) -> Bundle:
    """The verified bundle at ``path`` (see the module doc for what is checked). With
    ``trust`` keys given or ``require_signature``, an unsigned bundle or one not signed by a
    trusted key is refused. BundleError (one line) says what is wrong and what to do; a
    damaged, truncated or hostile file never raises anything else."""
    path = Path(path)
    return verify_entries(path, archive.read_entries(path), trust, require_signature)


def verify_entries(
    path: Path,
    entries: list[archive.Entry],
    trust: Sequence[Path] = (),
    require_signature: bool = False,
) -> Bundle:
    """:func:`open_bundle` on entries already read from ``path``."""
    where = str(path)
    by_name = {e.name: e for e in entries}
    if archive.MANIFEST not in by_name:
        raise BundleError(f"{where} has no manifest.json; it is not a bundle edgeflow built")
    manifest_bytes = archive.unpack(by_name[archive.MANIFEST], where)
    manifest = mf.parse(manifest_bytes, where)
    listed: dict[str, str] = manifest["files"]
    total = sum(e.size for e in entries)
    if total > archive.MAX_UNPACKED_BYTES:
        raise BundleError(
            f"{where} unpacks to {total} bytes, more than the {archive.MAX_UNPACKED_BYTES} "
            "allowed; it is damaged or hostile"
        )
    files: dict[str, bytes] = {}
    for e in entries:
        if e.name in (archive.MANIFEST, archive.SIGNATURE):
            continue
        rel = e.name[len(archive.FILES_PREFIX) :]
        if not e.name.startswith(archive.FILES_PREFIX) or rel not in listed:
            raise BundleError(
                f"{where} holds {e.name!r}, which its manifest does not list; it was altered: "
                "rebuild it with edgeflow bundle build"
            )
        try:
            data = archive.unpack(e)
        except BundleError:
            raise BundleError(
                f"{where}: file {rel!r} is damaged (it does not unpack intact); the bundle "
                "was altered or truncated: copy it again or rebuild it"
            ) from None
        if mf.sha256(data) != listed[rel]:
            raise BundleError(
                f"{where}: file {rel!r} does not match its sha256 in the manifest; the bundle "
                "was altered: rebuild it with edgeflow bundle build"
            )
        files[rel] = data
    absent = sorted(set(listed) - set(files))
    if absent:
        raise BundleError(
            f"{where}: file {absent[0]!r} listed in the manifest is missing; the bundle was "
            "altered: rebuild it with edgeflow bundle build"
        )
    signature = None
    if archive.SIGNATURE in by_name:
        signature = keys.parse_signature(archive.unpack(by_name[archive.SIGNATURE], where), where)
    signed_by = None
    if trust or require_signature:
        if signature is None:
            raise BundleError(
                f"{where} is not signed; sign it with `edgeflow bundle sign {path} --key KEY` "
                "(with a key whose .pub this node trusts), or deploy without --trust on a "
                "node that accepts unsigned bundles"
            )
        if not trust:
            raise BundleError(
                f"{where} must be signed by a trusted key but no key is trusted here; give "
                f"--trust KEY.pub or set {TRUST_ENV}"
            )
        signed_by = keys.verify(manifest_bytes, signature, trust, where)
    return Bundle(
        path=path,
        name=manifest["name"],
        version=manifest["version"],
        manifest=manifest,
        signed_by=signed_by,
        signature_key=signature.key if signature else None,
        files=files,
        manifest_bytes=manifest_bytes,
    )
