"""Ed25519 keys and signatures for bundles (the ``cryptography`` package, imported only
when a key is used). Keys are PEM files as OpenSSL writes them: the private key PKCS#8
(``openssl genpkey -algorithm ed25519``), the public key SubjectPublicKeyInfo
(``openssl pkey -pubout``). A key is named by its fingerprint: the first 16 hex digits of
the sha256 of its raw 32-byte public key."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from edgeflow.bundle.errors import BundleError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIGNATURE_FORMAT = "edgeflow-signature/1"


def fingerprint(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"{what} {path} does not exist; give the path to a PEM key file"
        ) from None
    except OSError as exc:
        raise BundleError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path`` (PKCS#8, encrypted or not)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read(path, "signing key")
    if b"PUBLIC KEY" in data and b"PRIVATE KEY" not in data:
        raise BundleError(
            f"signing key {path} is a public key; sign with the private key (KEY.key), "
            "the .pub goes to the nodes"
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:  # encrypted without a passphrase, or a passphrase for a plain key
        if passphrase is None:
            raise BundleError(
                f"signing key {path} is passphrase-protected; put the passphrase in an "
                "environment variable and name it with --passphrase-env VAR"
            ) from None
        raise BundleError(
            f"signing key {path} is not passphrase-protected; leave out --passphrase-env"
        ) from None
    except ValueError:
        if passphrase is not None and b"ENCRYPTED" in data:
            raise BundleError(
                f"the passphrase does not open signing key {path}; check the variable "
                "--passphrase-env names"
            ) from None
        raise BundleError(_not_a_key(path, "private")) from None
    except Exception:  # unsupported algorithm and the like
        raise BundleError(_not_a_key(path, "private")) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(_not_a_key(path, "private"))
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file ``path``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read(path, "trust key")
    if b"PRIVATE KEY" in data:
        raise BundleError(
            f"trust key {path} is a private key; give the public key (KEY.pub, or "
            "openssl pkey -in KEY -pubout) and keep the private key off the node"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:
        raise BundleError(_not_a_key(path, "public")) from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(_not_a_key(path, "public"))
    return key


def _not_a_key(path: Path, kind: str) -> str:
    made = "openssl genpkey -algorithm ed25519" if kind == "private" else "openssl pkey -pubout"
    return (
        f"{path} is not an Ed25519 {kind} key in PEM format; make a key pair with "
        f"edgeflow bundle keygen NAME (or {made})"
    )


def generate(out: Path, passphrase: bytes | None = None, force: bool = False) -> tuple[Path, Path]:
    """A new key pair: ``OUT.key`` (private, mode 0600) and ``OUT.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    base = out.with_suffix("") if out.suffix in (".key", ".pub") else out
    private_path, public_path = Path(f"{base}.key"), Path(f"{base}.pub")
    if not force:
        for p in (private_path, public_path):
            if p.exists():
                raise BundleError(f"{p} already exists; choose another name or pass --force")
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(private_path, private_pem, 0o600)
    _write(public_path, public_pem, 0o644)
    return private_path, public_path


def _write(path: Path, data: bytes, mode: int) -> None:
    try:
        if path.exists():
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, mode)  # whatever the umask
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from None


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The signature document (JSON bytes) over ``manifest_bytes``."""
    doc = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "key": fingerprint(key.public_key()),
        "signature": base64.b64encode(key.sign(manifest_bytes)).decode(),
    }
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


@dataclass(frozen=True)
class Signature:
    key: str  # the fingerprint the signer's document names (not yet checked)
    value: bytes


def parse_signature(data: bytes, where: str) -> Signature:
    damaged = BundleError(f"{where}: signature.json is damaged; sign the bundle again")
    try:
        doc: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise damaged from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != SIGNATURE_FORMAT
        or doc.get("algorithm") != "ed25519"
        or not isinstance(doc.get("key"), str)
        or not isinstance(doc.get("signature"), str)
    ):
        raise damaged
    try:
        value = base64.b64decode(doc["signature"], validate=True)
    except ValueError:
        raise damaged from None
    if len(value) != 64:
        raise damaged
    return Signature(doc["key"], value)


def verify(manifest_bytes: bytes, signature: Signature, trust: Sequence[Path], where: str) -> str:
    """The fingerprint of the trusted key that made ``signature``; BundleError when none did."""
    from cryptography.exceptions import InvalidSignature

    keys = [(p, load_public_key(p)) for p in trust]
    for _path, key in keys:
        try:
            key.verify(signature.value, manifest_bytes)
        except InvalidSignature:
            continue
        return fingerprint(key)
    trusted = {fingerprint(k): p for p, k in keys}
    if signature.key in trusted:
        raise BundleError(
            f"{where}: the signature does not match the bundle's manifest (altered after it "
            f"was signed with {trusted[signature.key]}); rebuild and sign it again"
        )
    names = ", ".join(f"{p} ({fp})" for fp, p in trusted.items())
    raise BundleError(
        f"{where} is signed by key {signature.key}, which is not trusted here (trusted: "
        f"{names}); sign it with a trusted key, or add that key's .pub with --trust"
    )
