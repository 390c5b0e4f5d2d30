"""Kafka security options on a real broker with SSL, mTLS and SASL_SSL (SCRAM) listeners whose
certificates scripts/kafka.sh makes: the sink (with topic creation) and the source work on each;
a wrong password, an untrusted CA and a missing client certificate each fail the run with one
line naming the cause; the secret is in no log line, argv or ``inspect --json`` output."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from edgeflow.connectors.kafka_security import KafkaSecurity
from edgeflow.engine.figures import kafka_connection
from tests.helpers import edgeflow, lines, popen_edgeflow, write_flow
from tests.kafka_secure_helpers import (  # noqa: F401  (the fixture secure_kafka)
    SecureKafkaBroker,
    cmdlines,
    consume_secure,
    process_tree,
    secure_kafka_fixture,
)

SINK_FLOW = """
from edgeflow import Flow, agg, window
from edgeflow.connectors import kafka, simulate

flow = Flow({name!r})
r = flow.source(simulate.sensors(devices=3, rate_hz=10, seed=1, speed=None, duration="10s",
                                 start="2026-01-01T00:00:00Z"))
w = r.window(window.tumbling("1s"), agg.count(), name="summary")
w.to(kafka.sink({topic!r}, bootstrap={bootstrap!r}, drain_timeout="60s", {security}), name="alerts")
"""

SOURCE_FLOW = """
from edgeflow import Flow
from edgeflow.connectors import files, kafka

flow = Flow({name!r})
r = flow.source(kafka.source({topic!r}, bootstrap={bootstrap!r}, stop_at_end=True, fields=["count"],
                             {security}), key="key", time="window_start")
r.to(files.sink({out!r}))
"""

#: 3 devices x 10 one-second windows
RECORDS = 30


def options(broker: SecureKafkaBroker, listener: str) -> str:
    """The security options of kafka.sink()/source() for ``listener``, as flow source."""
    ca = broker.cert("ca.pem")
    if listener == "ssl":
        return f"security_protocol='SSL', ssl_cafile={ca!r}"
    if listener == "mtls":
        return (
            f"security_protocol='SSL', ssl_cafile={ca!r}, "
            f"ssl_certfile={broker.cert('client.pem')!r}, ssl_keyfile={broker.cert('client.key')!r}"
        )
    return (
        f"security_protocol='SASL_SSL', ssl_cafile={ca!r}, sasl_mechanism='SCRAM-SHA-256', "
        f"sasl_username={broker.user!r}, sasl_password_env='KAFKA_PASSWORD'"
    )


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "KAFKA" not in k}
    env.update(extra)
    return env


def run_watching_argv(args: tuple[str, ...], env: dict[str, str], secret: str) -> tuple[int, str]:
    """Run ``edgeflow *args``; while it runs, check that no process of its tree (the flow,
    its forwarders) has ``secret`` in its command line. (exit code, stderr)"""
    proc = popen_edgeflow(*args, env=env)
    seen_forwarders = False
    while proc.poll() is None:
        lines_ = cmdlines(process_tree(proc.pid))
        assert not any(secret in c for c in lines_), "the secret is in a command line"
        seen_forwarders = seen_forwarders or any("multiprocessing" in c for c in lines_)
        time.sleep(0.1)
    _, err = proc.communicate(timeout=60)
    assert seen_forwarders, "the forwarder processes were never seen"
    return proc.returncode, err


# -- build-time checks (no broker) ----------------------------------------------------------
def test_security_options_are_checked_when_the_flow_is_built(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    sinks = [
        "sasl_password='hunter2-literal', security_protocol='SASL_SSL', "
        "sasl_mechanism='PLAIN', sasl_username='edge'",
        f"security_protocol='SSL', ssl_cafile={str(tmp_path / 'missing-ca.pem')!r}",
        f"security_protocol='SSL', ssl_certfile={str(cert)!r}",
        "security_protocol='SASL_SSL', sasl_mechanism='SCRAM-SHA-256', "
        "sasl_password_env='EDGE_TEST_PW'",
        "security_protocol='TLS'",
        "security_protocol='SASL_SSL', sasl_mechanism='GSSAPI', sasl_username='edge', "
        "sasl_password_env='EDGE_TEST_PW'",
        "producer_options={'sasl_plain_password': 'hunter2-raw'}",
    ]
    body = "\n".join(
        [
            "from edgeflow import Flow, agg, window",
            "from edgeflow.connectors import kafka, simulate",
            "flow = Flow('checks')",
            "r = flow.source(simulate.sensors(devices=1, duration='1s'))",
            "w = r.window(window.tumbling('1s'), agg.count())",
            *(
                f"w.to(kafka.sink('t', bootstrap='127.0.0.1:1', {s}), name='k{i}')"
                for i, s in enumerate(sinks)
            ),
        ]
    )
    flow = write_flow(tmp_path / "checks.py", body)
    res = edgeflow("validate", str(flow), check=False, env=env_with(EDGE_TEST_PW="pw-in-env"))
    assert res.returncode == 2, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "sasl_password= is refused" in out and "sasl_password_env='VAR'" in out, out
    assert "missing-ca.pem': no such file" in out, out
    assert "ssl_certfile= without ssl_keyfile=" in out, out
    assert "needs sasl_username=" in out, out
    assert "security_protocol='TLS': use one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL" in out
    assert "sasl_mechanism='GSSAPI': use one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512" in out
    assert "producer_options['sasl_plain_password']" in out, out
    # a refused literal is named, never echoed
    assert "hunter2" not in out, out


def test_inspect_shows_secret_names_never_their_values(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    secret = "s3cret-value-in-env-42"
    flow = write_flow(
        tmp_path / "f.py",
        SINK_FLOW.format(
            name="inspect-sec", topic="t", bootstrap="127.0.0.1:1",
            security=f"security_protocol='SASL_SSL', ssl_cafile={str(ca)!r}, "
            "sasl_mechanism='SCRAM-SHA-512', sasl_username='edge', sasl_password_env='KAFKA_PASSWORD'",
        ),
    )  # fmt: skip
    res = edgeflow("inspect", "--json", str(flow), env=env_with(KAFKA_PASSWORD=secret))
    assert secret not in res.stdout + res.stderr
    sink = next(s for s in orjson.loads(res.stdout)["steps"] if s["name"] == "alerts")
    assert sink["connector"]["security"] == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": str(ca),
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "edge",
        "sasl_password_env": "KAFKA_PASSWORD",
    }


def test_client_config_checks_hostnames_by_default_and_reads_the_secret_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    sec = KafkaSecurity.of(
        {"security_protocol": "sasl_ssl", "sasl_mechanism": "scram-sha-256",
         "sasl_username": "edge", "sasl_password_file": str(pw)}
    )  # fmt: skip
    assert sec.problems() == []
    cfg = sec.client_config()
    assert cfg["ssl_check_hostname"] is True
    assert cfg["security_protocol"] == "SASL_SSL" and cfg["sasl_mechanism"] == "SCRAM-SHA-256"
    assert cfg["sasl_plain_password"] == "from-file"
    assert "from-file" not in repr(sec) and "from-file" not in str(sec.describe())
    pw.write_text("rotated")  # read when a client is made, not when the flow is built
    assert sec.client_config()["sasl_plain_password"] == "rotated"
    assert KafkaSecurity.of({}).client_config() == {}


# -- on the secured broker ------------------------------------------------------------------
@pytest.mark.broker
@pytest.mark.parametrize("listener", ["ssl", "mtls", "sasl"])
def test_sink_creates_the_topic_and_delivers_and_the_source_reads(
    tmp_path: Path, secure_kafka: SecureKafkaBroker, listener: str
) -> None:
    broker = secure_kafka
    topic = f"secure-{listener}"
    security = options(broker, listener)
    env = env_with(KAFKA_PASSWORD=broker.password)
    sink = write_flow(
        tmp_path / "sink.py",
        SINK_FLOW.format(
            name=f"sink-{listener}", topic=topic, bootstrap=broker.endpoint(listener),
            security=security,
        ),
    )  # fmt: skip
    args = ("run", str(sink), "--state-dir", str(tmp_path / "st"))
    code, err = run_watching_argv(args, env, broker.password)
    assert code == 0, err
    assert f"{RECORDS} queued, {RECORDS} delivered" in err, err
    assert broker.password not in err
    # the topic was created by the sink (create_topic=True) over the secured listener
    got = consume_secure(broker.client(listener), topic, RECORDS)
    assert len(got) == RECORDS
    assert sorted(orjson.loads(m.value)["count"] for m in got) == [10] * RECORDS
    out = tmp_path / "read.jsonl"
    source = write_flow(
        tmp_path / "source.py",
        SOURCE_FLOW.format(
            name=f"source-{listener}", topic=topic, bootstrap=broker.endpoint(listener),
            security=security, out=str(out),
        ),
    )  # fmt: skip
    res = edgeflow("run", str(source), "--state-dir", str(tmp_path / "st-src"), env=env)
    assert broker.password not in res.stderr
    assert len(lines(out)) == RECORDS


@pytest.mark.broker
def test_refused_connections_fail_with_one_line_naming_the_cause(
    tmp_path: Path, secure_kafka: SecureKafkaBroker
) -> None:
    broker = secure_kafka
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password-77\n")
    ca, other = broker.cert("ca.pem"), broker.cert("other-ca.pem")
    cases: dict[str, tuple[str, str, str]] = {
        "password": (
            "sasl",
            f"security_protocol='SASL_SSL', ssl_cafile={ca!r}, sasl_mechanism='SCRAM-SHA-512', "
            f"sasl_username='edge', sasl_password_file={str(wrong)!r}",
            f"kafka sink 'alerts': SASL authentication failed for user 'edge' on "
            f"{broker.endpoint('sasl')} (wrong username or password?); check sasl_username and "
            f"the secret in the file {wrong}",
        ),
        "ca": (
            "ssl",
            f"security_protocol='SSL', ssl_cafile={other!r}",
            f"kafka sink 'alerts': certificate verify failed: the broker's certificate at "
            f"{broker.endpoint('ssl')} is not signed by ssl_cafile={other}",
        ),
        "client-cert": (
            "mtls",
            f"security_protocol='SSL', ssl_cafile={ca!r}",
            f"kafka sink 'alerts': the broker at {broker.endpoint('mtls')} requires a client "
            "certificate (mTLS): set ssl_certfile and ssl_keyfile",
        ),
    }
    procs: dict[str, subprocess.Popen[str]] = {}
    for name, (listener, security, _) in cases.items():
        flow = write_flow(
            tmp_path / f"{name}.py",
            SINK_FLOW.format(
                name=f"refused-{name}", topic=f"refused-{name}",
                bootstrap=broker.endpoint(listener), security=security,
            ),
        )  # fmt: skip
        state = str(tmp_path / f"st-{name}")
        procs[name] = popen_edgeflow("run", str(flow), "--for", "4s", "--state-dir", state)
    # the source fails too, at once, naming the cause
    src = write_flow(
        tmp_path / "src.py",
        SOURCE_FLOW.format(
            name="refused-src", topic="secure-ssl", bootstrap=broker.endpoint("ssl"),
            security=f"security_protocol='SSL', ssl_cafile={other!r}",
            out=str(tmp_path / "never.jsonl"),
        ),
    )  # fmt: skip
    src_res = edgeflow("run", str(src), "--for", "30s", check=False, timeout=90)
    results: dict[str, tuple[int, str]] = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, err)
    for name, (_, _, line) in cases.items():
        code, err = results[name]
        assert code != 0, (name, err)
        assert f"error: {line}" in err, (name, err)
        # said once while running (not once per retry) and once as the run's error
        assert err.count(line) == 2, (name, err)
        assert "Traceback" not in err, (name, err)
        # nothing lost: the records wait in the outbox for the next run
        assert f"{RECORDS} queued, 0 delivered" in err, (name, err)
        assert f"{RECORDS} records (" in err, (name, err)
    # `edgeflow status` reads the sink's connection state from the outbox
    state_line = kafka_connection(tmp_path / "st-password" / "outbox.sqlite")
    assert state_line is not None and state_line.startswith("refused since "), state_line
    assert state_line.endswith(cases["password"][2]), state_line
    assert "not-the-password-77" not in results["password"][1]
    assert broker.password not in results["password"][1]
    assert src_res.returncode != 0, src_res.stderr
    assert (
        f"kafka.source('secure-ssl'): certificate verify failed: the broker's certificate at "
        f"{broker.endpoint('ssl')} is not signed by ssl_cafile={other}"
    ) in src_res.stderr, src_res.stderr
    assert "Traceback" not in src_res.stderr


def test_fleet_status_topic_works_over_sasl_ssl_from_the_fleet_variables(
    secure_kafka: SecureKafkaBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node reports to its status topic and `edgeflow fleet status` reads it over SASL_SSL,
    both configured by EDGEFLOW_FLEET_* variables (the secret by its variable's name); a wrong
    password is one line, not a traceback, and the secret is never printed."""
    from edgeflow.fleet.status_topic import StatusReporter

    endpoint = secure_kafka.endpoint("sasl")
    fleet_env = {
        "EDGEFLOW_FLEET_SECURITY_PROTOCOL": "SASL_SSL",
        "EDGEFLOW_FLEET_SSL_CAFILE": secure_kafka.cert("ca.pem"),
        "EDGEFLOW_FLEET_SASL_MECHANISM": "SCRAM-SHA-256",
        "EDGEFLOW_FLEET_SASL_USERNAME": secure_kafka.user,
        "EDGEFLOW_FLEET_SASL_PASSWORD_ENV": "FLEET_PW",
        "FLEET_PW": secure_kafka.password,
    }
    for k, v in fleet_env.items():
        monkeypatch.setenv(k, v)
    logged: list[str] = []
    reporter = StatusReporter(endpoint, "fleet.sec", "node-1/plant", logged.append, period_s=60)
    reporter.publish(
        {"node": "node-1", "deployment": "plant", "version": "1.0", "state": "running"}
    )
    reporter.close(timeout=60)
    assert not logged, logged
    env = {**os.environ, **fleet_env}
    res = edgeflow(
        "fleet", "status", "--bootstrap", endpoint, "--topic", "fleet.sec", "--json",
        env=env, check=False, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert '"node-1/plant"' in res.stdout and '"1.0"' in res.stdout
    res = edgeflow(
        "fleet", "status", "--bootstrap", endpoint, "--topic", "fleet.sec",
        env={**env, "FLEET_PW": "wrong-password"}, check=False, timeout=120,
    )  # fmt: skip
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert secure_kafka.password not in res.stderr + res.stdout
