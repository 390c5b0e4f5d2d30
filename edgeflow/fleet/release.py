"""What a deployment runs, recorded in ``<deploy>/release.json``, and the checks around it.

``release.json`` holds:

* ``current`` - the version that runs: ``version`` (None for a plain ``flow.py``), ``entry``
  (the flow file, relative to the deployment directory), ``hashes`` (sha256 of every deployed
  file, relative paths), ``signed_by``;
* ``previous`` - the last good version before ``current`` (an update rolls back to it);
* ``update`` - the last over-the-air update: ``from``, ``to``, ``result`` (``checking``,
  ``succeeded``, ``rolled back``), ``reason``, ``at``, ``grace_s``, ``state`` (what happened
  to the state) and ``state_aside`` (where incompatible state was moved, kept for a rollback);
* ``run_args``, ``limits``, ``env``, ``status`` - how the worker and the supervisor were
  started, so an update keeps them.

Guarantees: the deployed files are checked against their hashes before every worker start
(:func:`integrity_problem`); a deployment directory is 0700 and its files 0600
(:func:`edgeflow.file_modes.restrict_tree`); state is never deleted: incompatible state is moved aside and the outbox
(records not yet delivered to Kafka) always follows the running version
(:func:`state_aside_keeping_outbox`, :func:`restore_state`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from edgeflow.engine.runner import move_state_aside

RELEASE_FILE = "release.json"
OUTBOX_FILES = ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(base: Path, root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (``__pycache__`` excluded), keyed by its path
    relative to ``base``."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts:
            out[p.relative_to(base).as_posix()] = sha256_file(p)
    return out


def read_release(deploy_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((deploy_dir / RELEASE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_release(deploy_dir: Path, record: dict[str, Any]) -> None:
    """Replace ``release.json`` atomically (0600)."""
    path = deploy_dir / RELEASE_FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` readable by its owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _legacy_current(deploy_dir: Path) -> dict[str, Any] | None:
    """A deployment made before ``release.json``: ``flow.py`` and ``flow.sha256``."""
    try:
        want = (deploy_dir / "flow.sha256").read_text().strip()
    except OSError:
        return None
    return {"version": None, "entry": "flow.py", "hashes": {"flow.py": want}}


def current_release(deploy_dir: Path) -> dict[str, Any] | None:
    cur = read_release(deploy_dir).get("current")
    return cur if isinstance(cur, dict) else _legacy_current(deploy_dir)


def redeploy_hint(deploy_dir: Path) -> str:
    cur = current_release(deploy_dir) or {}
    what = "BUNDLE.efb" if cur.get("version") is not None else "FLOW.py --detach"
    return f"edgeflow deploy {what} --name {deploy_dir.name} --root {deploy_dir.parent}"


def integrity_problem(deploy_dir: Path) -> str | None:
    """Why the deployed flow must not start (a file changed or went missing since deploy), or
    None when every recorded file still has its recorded sha256."""
    cur = current_release(deploy_dir)
    if cur is None:
        return None
    for rel, want in sorted(cur.get("hashes", {}).items()):
        path = deploy_dir / rel
        try:
            got = sha256_file(path)
        except OSError:
            return (
                f"{path.name} is missing from {path.parent} since deploy; redeploy with "
                f"{redeploy_hint(deploy_dir)}"
            )
        if got != want:
            return (
                f"{path.name} was changed after deploy (sha256 {got[:16]}... != {want[:16]}...); "
                f"redeploy with {redeploy_hint(deploy_dir)}"
            )
    return None


def _move_outbox(src: Path, dst: Path) -> None:
    dst.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in OUTBOX_FILES:
        if (src / name).exists():
            os.replace(src / name, dst / name)


def state_aside_keeping_outbox(state_dir: Path) -> Path | None:
    """Move ``state_dir`` aside (kept, never deleted) so the next version starts fresh, but
    bring its outbox back: records not yet delivered to Kafka are still delivered. Only while no
    worker runs. Returns where the old state went (None: there was none)."""
    moved = move_state_aside(state_dir)
    if moved is not None:
        _move_outbox(moved, state_dir)
    return moved


def restore_state(state_dir: Path, aside: Path) -> Path | None:
    """Roll the state back: the failed version's state goes aside (kept), ``aside`` (the state
    the previous version left) comes back, and the outbox follows the running version."""
    failed = move_state_aside(state_dir)
    if aside.is_dir():
        aside.rename(state_dir)
    if failed is not None:
        _move_outbox(failed, state_dir)
    return failed
