"""Build and sign bundles.

:func:`collect` finds what a flow needs without running it: the flow file; its local
modules (imports that resolve to ``.py`` files or packages under the flow's directory, found
by reading the source with :mod:`ast`, recursively); files named by string literals in that
source that exist under the flow's directory (tables such as ``r.enrich("devices.csv", ...)``
or ``Path(__file__).parent / "devices.csv"``); and what ``--include`` adds. :func:`build`
writes them with their manifest as a canonical archive: the same inputs give the same bytes.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from edgeflow.bundle import archive, keys
from edgeflow.bundle import manifest as mf
from edgeflow.bundle.errors import BUNDLE_SUFFIX, BundleError
from edgeflow.bundle.verify import Bundle, verify_entries

_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def _under(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root).as_posix()


class _Collector:
    def __init__(self, flow: Path) -> None:
        self.flow = flow.resolve()
        self.root = self.flow.parent
        self.found: dict[str, Path] = {}
        self._todo: list[Path] = []
        #: files found but not packed: relative path -> why
        self.left_out: dict[str, str] = {}

    def add(self, path: Path) -> None:
        rel = _rel(path, self.root)
        if rel in self.found:
            return
        self.found[rel] = path.resolve()
        if path.suffix == ".py":
            self._todo.append(path.resolve())

    def add_unless_secret(self, path: Path) -> None:
        """Add ``path`` unless it looks like a secret (noted in ``left_out`` instead)."""
        reason = _secret_like(path)
        if reason is None:
            self.add(path)
        else:
            self.left_out[_rel(path, self.root)] = reason

    def run(self) -> dict[str, Path]:
        while self._todo:
            self._scan(self._todo.pop())
        return self.found

    def _module(self, dotted: str) -> None:
        """Add the local file(s) of module ``dotted`` and the packages on its way."""
        parts = [p for p in dotted.split(".") if p]
        base = self.root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            pkg = base / part
            init = pkg / "__init__.py"
            if init.is_file() and _under(init, self.root):
                self.add(init)
            if last and (base / f"{part}.py").is_file() and _under(base / f"{part}.py", self.root):
                self.add(base / f"{part}.py")
            if not pkg.is_dir():
                return
            base = pkg

    def _scan(self, path: Path) -> None:
        try:
            source = path.read_bytes()
            tree = ast.parse(source, filename=str(path))
        except SyntaxError as exc:
            raise BundleError(
                f"{path}:{exc.lineno}: {exc.msg}; fix the syntax error before bundling"
            ) from None
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read {path}: {exc}") from None
        package = path.parent.relative_to(self.root).parts
        # what a flow writes (files.sink("out.jsonl")) is output, not something to ship
        written = {
            id(const)
            for call in ast.walk(tree)
            if isinstance(call, ast.Call) and _called(call).endswith("sink")
            for const in ast.walk(call)
            if isinstance(const, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._module(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    up = node.level - 1
                    if up > len(package):
                        continue
                    prefix = list(package[: len(package) - up])
                else:
                    prefix = []
                module = ".".join([*prefix, *(node.module or "").split(".")]).strip(".")
                if module:
                    self._module(module)
                for alias in node.names:
                    self._module(f"{module}.{alias.name}" if module else alias.name)
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in written
            ):
                self._literal(node.value, path.parent)

    def _literal(self, text: str, here: Path) -> None:
        if not text or len(text) > 4096 or "\n" in text or "\0" in text or os.path.isabs(text):
            return
        for base in {self.root, here}:
            candidate = base / text
            try:
                if (
                    candidate.is_file()
                    and _under(candidate, self.root)
                    and not _skipped(candidate, self.root)
                ):
                    self.add_unless_secret(candidate)
            except OSError:  # a name too long for the file system and the like
                continue


_SECRET_SUFFIXES = {".key", ".p12", ".pfx", ".jks", ".keystore", ".env"}
_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential")


def _secret_like(path: Path) -> str | None:
    """Why ``path`` looks like a secret that must not travel in a bundle, or None."""
    name = path.name.lower()
    if path.suffix.lower() in _SECRET_SUFFIXES or name == ".env":
        return "a key, keystore or environment file"
    if any(word in name for word in _SECRET_WORDS):
        return "its name says it holds a secret"
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return None
    if b"PRIVATE KEY-----" in head:
        return "it holds a private key"
    return None


def _called(call: ast.Call) -> str:
    """The name a call calls: ``sink`` for ``files.sink(...)``, ``Flow`` for ``Flow(...)``."""
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def _skipped(path: Path, root: Path) -> bool:
    """Files a bundle never takes from a directory or a string literal: byte code, other
    bundles, version-control and cache directories."""
    rel = path.resolve().relative_to(root).parts
    return (
        path.suffix in (".pyc", BUNDLE_SUFFIX)
        or any(p in _SKIP_DIRS for p in rel)
        or archive.looks_like_bundle(_head(path))
    )


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(64)
    except OSError:
        return b""


def collect(
    flow: Path, include: Iterable[Path] = (), left_out: dict[str, str] | None = None
) -> dict[str, Path]:
    """What a bundle of ``flow`` holds: relative path (to the flow's directory) -> file.
    Files that look like secrets (private keys, keystores, password or token files) are
    never taken from a string in the source or an included directory, only when named by
    ``--include`` one by one; each one left out is put in ``left_out`` with the reason."""
    if flow.is_dir():
        raise BundleError(f"{flow} is a directory; give the path to the flow's .py file in it")
    if not flow.is_file():
        raise BundleError(f"flow file {flow} does not exist; give the path to a .py flow file")
    if flow.suffix != ".py":
        raise BundleError(f"{flow} is not a .py flow file; give the path to one")
    c = _Collector(flow)
    c.add(flow)
    for inc in include:
        if not inc.exists():
            raise BundleError(f"--include {inc} does not exist")
        if not _under(inc, c.root):
            raise BundleError(
                f"--include {inc} is outside the flow's directory {c.root}; a bundle holds "
                "files by their path relative to the flow: move or copy it there"
            )
        if inc.is_dir():
            for p in sorted(inc.rglob("*")):
                if p.is_file() and _under(p, c.root) and not _skipped(p, c.root):
                    c.add_unless_secret(p)
        else:
            c.add(inc)
    found = c.run()
    if left_out is not None:
        left_out.update({rel: why for rel, why in c.left_out.items() if rel not in found})
    return found


def flow_name(flow: Path) -> str:
    """The name given to ``Flow("...")`` in the flow file (the one assigned to ``flow`` when
    there are several), else the file's stem; read from the source, not by running it."""
    try:
        tree = ast.parse(flow.read_bytes())
    except (SyntaxError, OSError, ValueError):
        return flow.stem
    names: list[tuple[bool, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call):
            continue
        call = node.value
        if _called(call) != "Flow" or not call.args:
            continue
        arg = call.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value:
            is_flow = any(isinstance(t, ast.Name) and t.id == "flow" for t in node.targets)
            names.append((not is_flow, arg.value))
    return min(names)[1] if names else flow.stem


def _created_at(files: Iterable[Path]) -> datetime:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        if not epoch.isdigit():
            raise BundleError(
                f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds; unset it or fix it"
            )
        return datetime.fromtimestamp(int(epoch), tz=timezone.utc)
    newest = max(int(p.stat().st_mtime) for p in files)
    return datetime.fromtimestamp(newest, tz=timezone.utc)


def check_version(version: str) -> str:
    if not mf.VERSION.fullmatch(version):
        raise BundleError(
            f"version {version!r} is not usable; give 1-64 letters, digits, '.', '_', '+' "
            "or '-' starting with a letter or digit (e.g. 1.4.0)"
        )
    return version


def default_output(name: str, version: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "flow"
    return Path(f"{safe}-{version}{BUNDLE_SUFFIX}")


def build(
    flow: Path,
    out: Path | None = None,
    *,
    version: str = "0",
    name: str | None = None,
    include: Sequence[Path] = (),
    left_out: dict[str, str] | None = None,
) -> tuple[Path, Bundle]:
    """Write the bundle of ``flow`` to ``out`` (default NAME-VERSION.efb in the current
    directory) and return its path and the bundle as read back and verified. The same files
    (content and newest mtime, or SOURCE_DATE_EPOCH) with the same options give the same
    bytes. Files that look like secrets are left out (see :func:`collect`) and listed in
    ``left_out`` when given."""
    from edgeflow import __version__

    check_version(version)
    name = name if name is not None else flow_name(flow)
    if not name.strip() or len(name) > 200 or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise BundleError(
            f"flow name {name[:40]!r} is empty, too long or has control characters; give "
            "another with --name"
        )
    out = out or default_output(name, version)
    found = collect(flow, include, left_out)
    out_resolved = out.resolve()
    found = {rel: p for rel, p in found.items() if p != out_resolved}
    try:
        contents = {rel: p.read_bytes() for rel, p in found.items()}
    except OSError as exc:
        raise BundleError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
    entry = _rel(flow, flow.resolve().parent)
    manifest = mf.make(
        name=name,
        version=version,
        edgeflow_version=__version__,
        created_at=_created_at(found.values()),
        entry=entry,
        files=contents,
    )
    entries = [archive.pack(archive.MANIFEST, mf.dumps(manifest))]
    entries += [archive.pack(archive.FILES_PREFIX + rel, data) for rel, data in contents.items()]
    write_atomic(out, archive.serialize(entries))
    return out, verify_entries(out, archive.read_entries(out))


def sign(bundle: Path, key: Path, passphrase: bytes | None = None) -> Bundle:
    """Sign ``bundle`` in place with the private ``key`` (replacing an earlier signature);
    the bundle is verified first, so a damaged one is never signed."""
    private = keys.load_private_key(key, passphrase)
    entries = archive.read_entries(bundle)
    verified = verify_entries(bundle, entries)
    signature = keys.sign(verified.manifest_bytes, private)
    kept = [e for e in entries if e.name != archive.SIGNATURE]
    write_atomic(bundle, archive.serialize([*kept, archive.pack(archive.SIGNATURE, signature)]))
    return verify_entries(bundle, archive.read_entries(bundle))


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file and a rename: readers see the old file
    or the new one, never half of one."""
    parent = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
