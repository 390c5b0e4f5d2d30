"""deploy/k3s: the manifests parse, name the image the Dockerfile builds, probe the paths and
port the metrics server serves, and mount every path the command uses."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kafka_helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
K3S = ROOT / "deploy" / "k3s"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def daemonset() -> dict[str, Any]:
    (ds,) = [d for d in docs(K3S / "daemonset.yaml") if d["kind"] == "DaemonSet"]
    return ds


def container() -> dict[str, Any]:
    (c,) = daemonset()["spec"]["template"]["spec"]["containers"]
    return c


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_manifest_parses_and_the_kustomization_lists_existing_files() -> None:
    files = sorted(K3S.rglob("*.yaml"))
    assert len(files) >= 4, files
    for path in files:
        for doc in docs(path):
            assert doc.get("apiVersion") and doc.get("kind"), path
    kust = docs(K3S / "kustomization.yaml")[0]
    assert {"namespace.yaml", "daemonset.yaml"} <= set(kust["resources"])
    for res in kust["resources"]:
        assert (K3S / res).is_file(), res
    # the PVC variant the kustomization's comment names exists
    for ref in re.findall(r"variants/[\w.-]+\.yaml", (K3S / "kustomization.yaml").read_text()):
        assert (K3S / ref).is_file(), ref


def test_the_daemonset_runs_the_image_the_dockerfile_builds() -> None:
    """Convention: docker-compose.yml builds the Dockerfile (build: .) and tags it
    edgeflow:<pyproject version> (image:); the DaemonSet runs that tag."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    node = compose["services"]["edgeflow"]
    assert node["build"] in (".", {"context": "."}) and (ROOT / "Dockerfile").is_file()
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version
    assert node["image"] == f"edgeflow:{version.group(1)}"
    assert container()["image"] == node["image"]
    assert container()["imagePullPolicy"] == "IfNotPresent"  # an imported image, no registry
    # the image's entrypoint is edgeflow: the args are an edgeflow command
    assert re.search(r'^ENTRYPOINT \["edgeflow"\]', (ROOT / "Dockerfile").read_text(), re.M)
    assert container()["args"][0] == "deploy"


def test_the_args_are_options_of_edgeflow_deploy() -> None:
    from edgeflow.cli.main import main

    deploy = main.commands["deploy"]
    known = {o for p in deploy.params for o in (*p.opts, *p.secondary_opts)}
    used = {a for a in container()["args"] if a.startswith("--")}
    assert used <= known, used - known


def test_probes_point_at_what_the_metrics_server_serves() -> None:
    c = container()
    args = c["args"]
    port = int(option(args, "--metrics-port"))
    assert option(args, "--metrics-host") == "0.0.0.0"  # a probe comes from outside the pod
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    assert (live["path"], ready["path"]) == ("/healthz", "/ready")
    for probe in (live, ready):
        assert ports.get(probe["port"], probe["port"]) == port
    annotations = daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    # the real server answers on those paths
    from edgeflow.engine.metrics import serve

    local = free_port()
    server = serve("k8s-probe", local, host="127.0.0.1")
    try:
        for path in (live["path"], ready["path"], annotations["prometheus.io/path"]):
            with urllib.request.urlopen(f"http://127.0.0.1:{local}{path}", timeout=5) as resp:
                assert resp.status == 200, path
    finally:
        server.shutdown()
        server.server_close()


def test_every_path_the_command_uses_is_on_a_mounted_volume() -> None:
    c = container()
    spec = daemonset()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert set(mounts.values()) <= set(volumes), set(mounts.values()) - set(volumes)
    paths = [a for a in c["args"] if a.startswith("/")]
    assert {"/bundle/flow.efb", "/trust/node.pub"} <= set(paths)
    for path in paths:
        where = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
        assert where, f"{path} is on no volume mount"
        volume = volumes[mounts[where[0]]]
        inside = path[len(where[0]) :].lstrip("/")
        items = (volume.get("configMap") or volume.get("secret") or {}).get("items")
        if inside and items is not None:  # a file from a ConfigMap or Secret key
            assert inside in {i["path"] for i in items}, (path, items)
    assert "hostPath" in volumes[mounts[option(c["args"], "--root")]]
    assert volumes["bundle"]["configMap"]["name"] == "edgeflow-bundle"
    assert "secret" in volumes["trust"] and "secret" in volumes["tls"]
    # secrets reach the flow through the environment (password_env=), never argv
    env = {e["name"]: e for e in c["env"]}
    for name in ("MQTT_PASSWORD", "KAFKA_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "edgeflow-secrets"


def test_memory_limit_covers_the_peak_rss_of_the_benchmarks() -> None:
    res = container()["resources"]
    mib = {"Mi": 1, "Gi": 1024}

    def size(text: str) -> int:
        m = re.fullmatch(r"(\d+)(Mi|Gi)", text)
        assert m, text
        return int(m.group(1)) * mib[m.group(2)]

    limit, request = size(res["limits"]["memory"]), size(res["requests"]["memory"])
    assert request <= limit
    readme = (ROOT / "README.md").read_text()
    figures = readme[readme.index("Latest figures") :]
    peaks = [int(x) for x in re.findall(r"peak RSS (\d+) MB", figures[:6000])]
    forwarders = [int(x) for x in re.findall(r"forwarders (\d+) MB", figures[:6000])]
    assert peaks, "README 'Latest figures' names no peak RSS"
    # the heaviest flow plus its forwarder processes, in MiB (1 MB < 1 MiB)
    assert limit >= max(peaks) + max(forwarders, default=0), (limit, peaks, forwarders)
    assert "Latest figures" in (K3S / "daemonset.yaml").read_text()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_default_and_the_pvc_variant(tmp_path: Path) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K3S)], capture_output=True, text=True, check=True
    ).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(built) if d]
    assert sorted(kinds) == ["DaemonSet", "Namespace"]
    copy = tmp_path / "k3s"
    shutil.copytree(K3S, copy)
    kust = yaml.safe_load((copy / "kustomization.yaml").read_text())
    kust["resources"].append("variants/state-pvc.yaml")
    kust["patches"] = [{"path": "variants/state-volume-pvc.yaml"}]
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    built = subprocess.run(
        ["kubectl", "kustomize", str(copy)], capture_output=True, text=True, check=True
    ).stdout
    (ds,) = [d for d in yaml.safe_load_all(built) if d and d["kind"] == "DaemonSet"]
    (state,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "state"]
    assert state == {"name": "state", "persistentVolumeClaim": {"claimName": "edgeflow-state"}}
