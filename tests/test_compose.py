"""docker-compose.yml agrees with the code: ports, listeners, volumes, the deployed flow."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from edgeflow.cli.deployments import DEFAULT_ROOT
from edgeflow.cli.loader import load_flow
from tests.helpers import ROOT


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def script_default(name: str, var: str) -> str:
    m = re.search(rf"\${{{var}:-(\w+)}}", (ROOT / "scripts" / name).read_text())
    assert m, f"scripts/{name} has no default for {var}"
    return m.group(1)


def test_images_are_pinned() -> None:
    for name, svc in compose()["services"].items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[-1]
        assert ":" in image and tag != "latest" and re.match(r"\d", tag), (
            f"{name}: pin {image} to a version"
        )


def test_kafka_ports_and_listeners_match_the_code() -> None:
    c = compose()
    kafka = c["services"]["kafka"]
    env = env_of(kafka)
    host_port = script_default("kafka.sh", "KAFKA_PORT")
    assert f"{host_port}:{host_port}" in kafka["ports"], (
        "host clients use the same port as the test broker"
    )
    advertised = dict(x.split("://") for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["EXTERNAL"] == f"localhost:{host_port}"
    node_bootstrap = env_of(c["services"]["edgeflow"])["EDGEFLOW_KAFKA_BOOTSTRAP"]
    assert node_bootstrap == advertised["INTERNAL"], (
        "the node talks to the broker over the internal listener"
    )
    assert node_bootstrap.split(":")[0] == "kafka"
    listeners = {x.split("://")[0]: x.split(":")[-1] for x in env["KAFKA_LISTENERS"].split(",")}
    assert listeners["INTERNAL"] == node_bootstrap.split(":")[1]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"1@kafka:{listeners['CONTROLLER']}"
    for k, v in env.items():
        if k.endswith(("REPLICATION_FACTOR", "MIN_ISR")):
            assert v == "1", f"{k} must be 1 on a single broker"
    assert any(v.split(":")[0] == "kafka-data" for v in kafka["volumes"])


def test_mosquitto_port_matches_its_config() -> None:
    svc = compose()["services"]["mosquitto"]
    conf_mount = next(v for v in svc["volumes"] if v.endswith("mosquitto.conf:ro"))
    conf = (ROOT / conf_mount.split(":")[0]).read_text()
    port = re.search(r"^listener (\d+)", conf, re.M)
    assert port and f"{port.group(1)}:{port.group(1)}" in svc["ports"]
    assert port.group(1) == "1883"
    assert any(v.startswith("mosquitto-data:") for v in svc["volumes"])


def test_the_node_deploys_a_valid_flow_with_its_state_on_a_volume() -> None:
    c = compose()
    node = c["services"]["edgeflow"]
    cmd = node["command"] if isinstance(node["command"], list) else shlex.split(node["command"])
    assert cmd[0] == "deploy"
    flow_file = ROOT / cmd[1]
    assert flow_file.is_file() and flow_file.parent.name == "flows"
    load_flow(str(flow_file)).plan()  # valid
    state_dir = Path(cmd[cmd.index("--state-dir") + 1])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in node["volumes"]}
    mounted = [Path(m) for m in mounts if state_dir.is_relative_to(m)]
    assert mounted, f"--state-dir {state_dir} must be on a volume"
    assert mounts[str(mounted[0])] in c["volumes"], (
        "a named volume, so state survives a new container"
    )
    workdir = re.search(r"^WORKDIR (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert (
        workdir and state_dir == Path(workdir.group(1)) / DEFAULT_ROOT / "quickstart" / "state"
    ), "the default deploy state dir"
    assert node["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_the_fog_profile_runs_three_distinct_nodes_and_a_fog_flow_reading_their_topics(
    monkeypatch: Any,
) -> None:
    """`docker compose --profile fog up`: three node flows with distinct names (so their record
    ids never collide), each state on its own named volume, and a fog flow whose source
    patterns match every topic the nodes publish to."""
    c = compose()
    fog_services = {n: s for n, s in c["services"].items() if "fog" in s.get("profiles", [])}
    nodes = {n: s for n, s in fog_services.items() if n.startswith("node-")}
    assert len(nodes) == 3 and "fog" in fog_services
    monkeypatch.setenv("EDGEFLOW_KAFKA_BOOTSTRAP", "localhost:9092")
    flow_names, published, volumes = set(), set(), set()
    for svc in nodes.values():
        env = env_of(svc)
        assert (
            env["EDGEFLOW_KAFKA_BOOTSTRAP"]
            == env_of(c["services"]["edgeflow"])["EDGEFLOW_KAFKA_BOOTSTRAP"]
        )
        cmd = svc["command"]
        assert cmd[:2] == ["deploy", "flows/plant_node.py"]
        monkeypatch.setenv("EDGEFLOW_NODE", env["EDGEFLOW_NODE"])
        plan = load_flow(str(ROOT / cmd[1])).plan()
        flow_names.add(plan.name)
        published |= {k.spec.describe()["topic"] for k in plan.sinks}
        (mount,) = svc["volumes"]
        volumes.add(mount.split(":")[0])
        assert mount.split(":")[0] in c["volumes"]
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert len(flow_names) == 3 and len(volumes) == 3, "each node its own flow name and state"
    fog = fog_services["fog"]
    plan = load_flow(str(ROOT / fog["command"][1])).plan()
    patterns = [re.compile(s.spec.describe()["pattern"]) for s in plan.sources]
    for topic in published:
        assert sum(bool(p.fullmatch(topic)) for p in patterns) == 1, (
            f"{topic} is read by exactly one fog source"
        )
    assert fog["volumes"][0].split(":")[0] in c["volumes"]
