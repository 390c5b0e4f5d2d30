"""Signed flow bundles (``.efb``): one file holding a flow, its local modules and tables, and
a manifest (name, version, edgeflow version, creation time, entry file, every file's sha256),
optionally signed with Ed25519.

    path, _ = build(Path("flows/plant.py"), version="1.2.0")   # edgeflow bundle build
    sign(path, Path("release.key"))                             # edgeflow bundle sign
    b = open_bundle(path, trust=[Path("release.pub")])          # refuses unsigned/tampered
    flow_file = b.extract(Path("/var/lib/edgeflow/plant/v1.2.0"))

Format: a canonical zip archive (see :mod:`edgeflow.bundle.archive`) of ``manifest.json``,
``files/<path>`` for every file and, once signed, ``signature.json`` (the detached Ed25519
signature over the manifest's bytes, inside the bundle).
"""

from __future__ import annotations

from edgeflow.bundle.build import build, collect, flow_name, sign
from edgeflow.bundle.errors import BUNDLE_SUFFIX, BundleError
from edgeflow.bundle.keys import fingerprint, generate, load_private_key, load_public_key
from edgeflow.bundle.verify import (
    TRUST_ENV,
    Bundle,
    is_bundle,
    open_bundle,
    trusted_keys_from_env,
)

__all__ = [
    "BUNDLE_SUFFIX",
    "TRUST_ENV",
    "Bundle",
    "BundleError",
    "build",
    "collect",
    "fingerprint",
    "flow_name",
    "generate",
    "is_bundle",
    "load_private_key",
    "load_public_key",
    "open_bundle",
    "sign",
    "trusted_keys_from_env",
]
