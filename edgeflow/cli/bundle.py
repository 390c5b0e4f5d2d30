"""``edgeflow bundle``: build, sign, verify and inspect flow bundles, and make signing keys."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from edgeflow.bundle import (
    TRUST_ENV,
    Bundle,
    BundleError,
    build,
    generate,
    open_bundle,
    sign,
    trusted_keys_from_env,
)

F = TypeVar("F", bound=Callable[..., Any])
_PATH = click.Path(path_type=Path)


def _one_line_errors(f: F) -> F:
    """BundleError becomes ``error: ...`` on stderr and exit 2, never a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except BundleError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _passphrase(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise BundleError(
            f"--passphrase-env {var}: the environment variable {var} is not set or empty; "
            "export the passphrase in it"
        )
    return value.encode()


_PASSPHRASE_ENV = click.option(
    "--passphrase-env",
    metavar="VAR",
    default=None,
    help="Read the private key's passphrase from environment variable VAR (never from "
    "the command line).",
)


def _summary(b: Bundle) -> str:
    n = len(b.manifest["files"])
    return f"{b.name} version {b.version} ({n} file{'s' if n != 1 else ''}, entry {b.entry})"


@click.group("bundle")
def bundle_group() -> None:
    """Signed flow bundles: one .efb file holding a flow, its local modules and tables and a
    manifest of their sha256 hashes, signed with Ed25519 for `edgeflow deploy BUNDLE --trust`."""


@bundle_group.command("build")
@click.argument("flow", type=_PATH)
@click.option("--version", "version", default="0", show_default=True, help="Bundle version.")
@click.option("--name", default=None, help="Flow name (default: the name given to Flow(...)).")
@click.option(
    "-o",
    "--output",
    type=_PATH,
    default=None,
    help="Where to write the bundle (default: NAME-VERSION.efb in the current directory).",
)
@click.option(
    "--include",
    type=_PATH,
    multiple=True,
    help="Also pack this file or directory (under the flow's directory); repeatable.",
)
@_one_line_errors
def build_cmd(
    flow: Path, version: str, name: str | None, output: Path | None, include: tuple[Path, ...]
) -> None:
    """Pack FLOW (a .py file), its local modules (imports of files under its directory), the
    existing files under its directory its source names (tables, e.g. "devices.csv"), the
    --include paths and a manifest into one bundle. The flow is read, not run. Files that
    look like secrets (private keys, keystores, password files) are left out unless named
    one by one with --include. The same
    inputs give the same bytes (timestamp: the newest file's, or SOURCE_DATE_EPOCH)."""
    left_out: dict[str, str] = {}
    out, b = build(flow, output, version=version, name=name, include=include, left_out=left_out)
    click.echo(f"built {out}: {_summary(b)}, sha256 of manifest {b.digest[:16]}")
    for rel in b.manifest["files"]:
        click.echo(f"  {rel}")
    for rel, why in left_out.items():
        click.echo(
            f"left out {rel}: {why}; secrets do not travel in bundles (give each node its "
            "own, e.g. from a Kubernetes Secret), or add it with --include if it must",
            err=True,
        )


@bundle_group.command("keygen")
@click.argument("out", type=_PATH)
@click.option("--force", is_flag=True, help="Overwrite OUT.key and OUT.pub if they exist.")
@_PASSPHRASE_ENV
@_one_line_errors
def keygen_cmd(out: Path, force: bool, passphrase_env: str | None) -> None:
    """Make an Ed25519 key pair: OUT.key (private, PEM PKCS#8, mode 0600; keep it off the
    nodes) and OUT.pub (public, PEM; give it to nodes with --trust). Same formats as
    `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`."""
    from edgeflow.bundle import fingerprint, load_public_key

    private, public = generate(out, _passphrase(passphrase_env), force=force)
    fp = fingerprint(load_public_key(public))
    click.echo(f"wrote {private} (private, keep it secret) and {public} (public); key {fp}")


@bundle_group.command("sign")
@click.argument("bundle", type=_PATH)
@click.option("--key", "key", type=_PATH, required=True, help="Private key (PEM).")
@_PASSPHRASE_ENV
@_one_line_errors
def sign_cmd(bundle: Path, key: Path, passphrase_env: str | None) -> None:
    """Sign BUNDLE in place with KEY: an Ed25519 signature over its manifest (which holds
    every file's sha256) is stored inside it as signature.json, replacing an earlier one."""
    b = sign(bundle, key, _passphrase(passphrase_env))
    click.echo(f"signed {bundle}: {_summary(b)}, key {b.signature_key}")


@bundle_group.command("verify")
@click.argument("bundle", type=_PATH)
@click.option(
    "--trust",
    type=_PATH,
    multiple=True,
    help=f"A trusted public key (PEM); repeatable. Default: the keys in ${TRUST_ENV}.",
)
@click.option(
    "--require-signature", is_flag=True, help="Fail when the bundle is not signed by a trusted key."
)
@_one_line_errors
def verify_cmd(bundle: Path, trust: tuple[Path, ...], require_signature: bool) -> None:
    """Check BUNDLE: every file against its hash, the archive byte for byte and, with trusted
    keys (--trust or $EDGEFLOW_TRUST), the signature. Exit 0 when it passes, 2 otherwise."""
    keys = list(trust) or trusted_keys_from_env()
    b = open_bundle(bundle, keys, require_signature=require_signature)
    if b.signed_by is not None:
        click.echo(f"ok: {bundle}: {_summary(b)}, signed by trusted key {b.signed_by}")
    elif b.signature_key is not None:
        click.echo(
            f"ok: {bundle}: {_summary(b)}, intact; signed by key {b.signature_key} (not "
            "checked: give --trust KEY.pub)"
        )
    else:
        click.echo(
            f"ok: {bundle}: {_summary(b)}, intact; NOT signed (sign it with: edgeflow bundle "
            f"sign {bundle} --key KEY)"
        )


@bundle_group.command("inspect")
@click.argument("bundle", type=_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and signature as JSON.")
@_one_line_errors
def inspect_cmd(bundle: Path, as_json: bool) -> None:
    """Print BUNDLE's manifest: name, version, edgeflow version, creation time, entry flow
    file, every file's sha256 and size, and who signed it (checked with `verify --trust`)."""
    b = open_bundle(bundle)
    sizes = {rel: len(data) for rel, data in b.files.items()}
    if as_json:
        doc = {
            "path": str(bundle),
            "digest": b.digest,
            "signature": None if b.signature_key is None else {"key": b.signature_key},
            "sizes": sizes,
            "manifest": b.manifest,
        }
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    m = b.manifest
    signed = f"key {b.signature_key} (verify with --trust)" if b.signature_key else "not signed"
    click.echo(f"bundle:           {bundle}")
    for key in ("name", "version", "edgeflow_version", "created_at", "entry"):
        click.echo(f"{key + ':':<18}{m[key]}")
    click.echo(f"{'signature:':<18}{signed}")
    click.echo(f"{'digest:':<18}{b.digest}")
    click.echo("files:")
    for rel, digest in m["files"].items():
        click.echo(f"  {digest[:16]}  {sizes[rel]:>10}  {rel}")
