"""MQTT ingest against a real Mosquitto: formats via mosquitto_pub, hostile input, kill -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import orjson

from tests.helpers import edgeflow, popen_edgeflow, records, write_flow
from tests.mqtt_helpers import prime_session, publish_all

NOW_S = int(time.time()) // 10 * 10 - 120  # a 10-s boundary two minutes ago


def expected_windows(
    readings: list[tuple[str, int, float]],
) -> dict[tuple[str, int], tuple[int, float, float]]:
    """(key, window_start ns) -> (count, sum, max), computed plainly."""
    acc: dict[tuple[str, int], list[float]] = {}
    for key, t_ms, v in readings:
        start = t_ms // 10_000 * 10_000 * 1_000_000
        acc.setdefault((key, start), []).append(v)
    return {k: (len(v), sum(v), max(v)) for k, v in acc.items()}


def got_windows(path: Path) -> dict[tuple[str, int], tuple[int, float, float]]:
    return {
        (r["key"], r["window_start"]): (r["count"], r["sum_temp"], r["max_temp"])
        for r in records(path)
    }


def test_mosquitto_pub_json_senml_csv_give_exact_windows(tmp_path: Path, mqtt_port: int) -> None:
    outs = {f: tmp_path / f"{f}.jsonl" for f in ("json", "senml", "csv")}
    dead = tmp_path / "dead.jsonl"
    out_paths = {k: str(v) for k, v in outs.items()}
    flow = write_flow(
        tmp_path / "f.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, mqtt
flow = Flow("mqtt-formats")
aggs = (agg.count(), agg.sum("temp"), agg.max("temp"))
sources = {{
    "json": mqtt.source("site/+/json", port={mqtt_port}, fields=["temp"]),
    "senml": mqtt.source("site/+/senml", port={mqtt_port}, format="senml", fields=["temp"]),
    "csv": mqtt.source("site/+/csv", port={mqtt_port}, format="csv", csv_columns=["ts", "temp"], fields=["temp"]),
}}
outs = {out_paths!r}
for name, spec in sources.items():
    r = flow.source(spec, key="topic[1]", time="ts", name=name + "_in")
    r.window(window.tumbling("10s"), *aggs, idle="1s", name=name + "_win").to(files.sink(outs[name]))
    r.dead_letters.to(files.sink({str(dead)!r} + "." + name))
""",
    )
    for name in ("json", "senml", "csv"):
        prime_session(mqtt_port, f"edgeflow-mqtt-formats-{name}_in", [f"site/+/{name}"])
    rng = random.Random(5)
    readings = {
        f: [
            (f"dev{d}", (NOW_S + i) * 1000 + rng.randrange(1000), round(rng.uniform(-5, 40), 3))
            for d in range(3)
            for i in range(30)
        ]
        for f in outs
    }
    for fmt, rows in readings.items():
        for dev in ("dev0", "dev1", "dev2"):
            lines = []
            for key, t_ms, v in rows:
                if key != dev:
                    continue
                if fmt == "json":
                    lines.append(orjson.dumps({"ts": t_ms, "temp": v}).decode())
                elif fmt == "senml":
                    lines.append(
                        orjson.dumps(
                            [{"bn": f"{dev}:", "bt": t_ms / 1000, "n": "temp", "u": "Cel", "v": v}]
                        ).decode()
                    )
                else:
                    lines.append(f"{t_ms},{v}")
            subprocess.run(
                ["mosquitto_pub", "-p", str(mqtt_port), "-q", "1", "-t", f"site/{dev}/{fmt}", "-l"],
                input="\n".join(lines) + "\n", text=True, check=True, timeout=30,
            )  # fmt: skip
    res = edgeflow("run", str(flow), "--for", "5s")
    for fmt in outs:
        want, got = expected_windows(readings[fmt]), got_windows(outs[fmt])
        assert set(got) == set(want), fmt
        for k, (n, total, top) in want.items():
            assert got[k][0] == n and abs(got[k][1] - total) < 1e-9 and got[k][2] == top, (fmt, k)
        assert (
            not (tmp_path / f"dead.jsonl.{fmt}").exists()
            or not (tmp_path / f"dead.jsonl.{fmt}").read_text()
        )
    assert "270 readings in" in res.stderr


def hostile_payloads(rng: random.Random, n: int) -> list[bytes]:
    base = (NOW_S + 5) * 1000
    good = orjson.dumps({"ts": base, "temp": 1.5})
    makers = [
        lambda: bytes(
            rng.randrange(128, 256) for _ in range(rng.randrange(1, 40))
        ),  # invalid UTF-8
        lambda: good[: rng.randrange(1, len(good) - 1)],  # truncated
        lambda: b"[" * rng.randrange(9, 200) + b"]" * 3,  # deeply nested / unbalanced
        lambda: b'{"ts": %d, "temp": NaN}' % base,
        lambda: b'{"ts": %d, "temp": Infinity}' % base,
        lambda: b'{"ts": %d, "temp": "%d"}' % (base, rng.randrange(100)),  # number as string
        lambda: orjson.dumps({"ts": base, "temp": rng.choice([True, None, [1], {"v": 1}, "hot"])}),
        lambda: orjson.dumps({"ts": base}),  # missing field
        lambda: orjson.dumps({"temp": 2.0}),  # missing time
        lambda: b'{"ts": %d, "temp": %d, "pad": "%s"}' % (base, 1, b"x" * 300_000),  # huge
        lambda: orjson.dumps(
            {"ts": rng.choice([1, -5, 10**17, 99999999999999]), "temp": 1.0}
        ),  # absurd time
        lambda: b'{"ts": %d, "temp": 1, "temp": 2}' % base,  # duplicate key
        lambda: b"",
        lambda: orjson.dumps(
            [{"ts": base, "temp": 1.0}, rng.randrange(9)]
        ),  # array with a non-object
        lambda: orjson.dumps(rng.choice(["text", 42, None])),
    ]
    return [rng.choice(makers)() for _ in range(n)]


def test_ten_thousand_hostile_payloads_neither_crash_nor_leak(
    tmp_path: Path, mqtt_port: int
) -> None:
    rng = random.Random(2026)
    bad = hostile_payloads(rng, 10_000)
    good = [(f"g{i % 7}", (NOW_S + rng.randrange(60)) * 1000, float(i % 13)) for i in range(2_000)]
    messages = [(f"hostile/{k}/t", orjson.dumps({"ts": t, "temp": v})) for k, t, v in good]
    messages += [(f"hostile/bad{i % 5}/t", p) for i, p in enumerate(bad)]
    rng.shuffle(messages)
    out, dead = tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    flow = write_flow(
        tmp_path / "f.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, mqtt
flow = Flow("hostile")
r = flow.source(mqtt.source("hostile/#", port={mqtt_port}, fields=["temp"]), key="topic[1]", time="ts", name="devices", lateness="2m")
r.window(window.tumbling("10s"), agg.count(), agg.sum("temp"), agg.max("temp"), idle="1s").to(files.sink({str(out)!r}))
r.dead_letters.to(files.sink({str(dead)!r}))
""",
    )
    prime_session(mqtt_port, "edgeflow-hostile-devices", ["hostile/#"])
    publish_all(mqtt_port, messages)
    res = edgeflow("run", str(flow), "--for", "8s", timeout=60)
    dls = records(dead)
    assert len(dls) == len(bad), "one dead letter per bad payload"
    assert all(d["error"] and d["source"].startswith("hostile/bad") for d in dls)
    assert all(len(d["raw"]) <= 1025 for d in dls), "raw payloads are truncated"
    reasons = Counter(d["error"].split(":")[0] for d in dls)
    assert len(reasons) >= 8, reasons
    assert got_windows(out) == expected_windows(good)
    assert "10000 dead letters" in res.stderr and "2000 readings in" in res.stderr


def test_kill_9_with_qos1_persistent_session_loses_nothing(tmp_path: Path, mqtt_port: int) -> None:
    out = tmp_path / "out.jsonl"
    flow = write_flow(
        tmp_path / "f.py",
        f"""
from edgeflow import Flow, agg, window
from edgeflow.connectors import files, mqtt
flow = Flow("restart")
r = flow.source(mqtt.source("line/+/t", port={mqtt_port}, qos=1, fields=["temp"]), key="topic[1]", time="ts", name="line")
r.window(window.tumbling("10s"), agg.count(), agg.sum("temp"), agg.max("temp"), idle="1500ms").to(files.sink({str(out)!r}))
""",
    )
    prime_session(mqtt_port, "edgeflow-restart-line", ["line/+/t"])
    sent: list[tuple[str, int, float]] = [
        (f"m{i % 4}", (NOW_S + i // 40) * 1000 + i % 40, float(i % 11)) for i in range(3_000)
    ]

    def publisher() -> None:  # about 6 s of steady traffic
        for i in range(0, len(sent), 50):
            chunk = sent[i : i + 50]
            publish_all(
                mqtt_port,
                [(f"line/{k}/t", orjson.dumps({"ts": t, "temp": v})) for k, t, v in chunk],
            )
            time.sleep(0.1)

    args = ("run", str(flow), "--state-dir", str(tmp_path / "st"), "--snapshot-every", "300ms")
    first = popen_edgeflow(*args, "--for", "60s")
    pub = threading.Thread(target=publisher)
    pub.start()
    time.sleep(2.5)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    time.sleep(1)  # the broker queues for the persistent session meanwhile
    second = popen_edgeflow(*args, "--for", "12s")
    pub.join()
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    got = got_windows(out)
    assert sum(n for n, _, _ in got.values()) == len(sent), "every accepted message is counted once"
    assert got == expected_windows(sent)
