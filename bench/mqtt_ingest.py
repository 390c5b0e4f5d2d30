"""MQTT ingest: a QoS 1 backlog in a Mosquitto broker, drained by an edgeflow flow vs a bare paho
subscriber.

A Mosquitto broker is started for the run (no persistence, unbounded queues, 60,000
messages in flight per client as in the shipped ``deploy/mosquitto/mosquitto.conf``). Two persistent sessions are primed: the bare subscriber's (``bench/#``) and the
flow's (``--receivers N``: N sessions in one shared subscription ``$share/bench-flow/bench/#``).
Four publishers (paho clients) then send 1,000,000 small JSON readings (``--quick``:
200,000) at ``--qos`` (1) with unique ids, which the broker queues for both. In the same run:
(1) a bare paho-mqtt subscriber that only counts drains its queue; (2) an edgeflow flow (MQTT
source with ``receivers=N``, acks after snapshots -> parse -> tumbling 1 s windows of count,
sum of ids, mean and max -> file sink) on one worker drains its own. Each rate is messages /
seconds from the first message received to the last, so neither side pays for the
publishers' speed nor its own start-up.

Exactly once: the flow's windows must hold, per device, exactly the count and the sum of ids
that were published (a loss or a duplicate changes them); ``exactly_once`` says whether they do.

The last line is JSON: bench, per_s (flow), baseline_per_s (bare paho), ratio, receivers, qos,
messages, flow_received, baseline_received, exactly_once.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit

PUBLISHERS = 4
FLOW_CLIENT = "bench-flow"
BARE_CLIENT = "bench-bare"
TOPICS = "bench/#"
#: unacknowledged messages per client, as in deploy/mosquitto/mosquitto.conf: enough for
#: rate x 2 snapshots (of 200 ms here); Mosquitto looks each PUBACK up in this list, so an
#: unbounded one makes the broker slow for a client that acks after snapshots
MAX_INFLIGHT = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(d: Path, port: int) -> subprocess.Popen[bytes]:
    conf = d / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages {MAX_INFLIGHT}\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"mosquitto did not start on port {port}; see its messages above")


def client(port: int, client_id: str, clean: bool = False) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)


def prime(port: int, client_id: str, topic: str, qos: int) -> None:
    """Create a persistent session subscribed to ``topic``, so the broker queues for it."""
    c = client(port, client_id)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(topic, qos)
    if not done.wait(30):
        raise SystemExit(f"the broker did not confirm the subscription of {client_id}")
    c.disconnect()
    c.loop_stop()


def write_payloads(d: Path, n: int) -> tuple[list[Path], dict[str, tuple[int, int]]]:
    """Publisher files, and per device (topic level 1) the expected (count, sum of ids)."""
    per = n // PUBLISHERS
    t0 = (int(time.time()) - 30) * 1000
    files, expected = [], {}
    for j in range(PUBLISHERS):
        ids = range(j * per, (j + 1) * per)
        p = d / f"pub{j}.txt"
        p.write_text(
            "".join(
                f'{{"ts":{t0 + (i - j * per) // 100},"temp":{20 + (i % 97) / 10},'
                f'"hum":{40 + i % 7},"id":{i}}}\n'
                for i in ids
            )
        )
        files.append(p)
        expected[f"dev{j}"] = (per, sum(ids))
    return files, expected


def publish(port: int, files: list[Path], qos: int) -> None:
    """One publisher process per file (``mosquitto_pub -l`` 2.0.11 drops most lines of a long
    input at QoS 1, so the publishers are paho clients that wait for every PUBACK)."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--publish", str(port), f"bench/dev{j}/t", str(p), str(qos)]
        )
        for j, p in enumerate(files)
    ]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("a publisher failed")


def publisher(port: int, topic: str, path: Path, qos: int) -> None:
    c = client(port, "", clean=True)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    pending: collections.deque[Any] = collections.deque()  # paho's packet ids wrap at 65535
    for line in path.read_bytes().splitlines():
        pending.append(c.publish(topic, line, qos))
        while len(pending) > 20_000 or (pending and pending[0].is_published()):
            done = pending.popleft()
            done.wait_for_publish(120)
            if not done.is_published():
                raise SystemExit(f"a message to {topic} was not published")
    for info in pending:
        info.wait_for_publish(120)
        if not info.is_published():
            raise SystemExit(f"a message to {topic} was not published")
    c.disconnect()
    c.loop_stop()


class Clock:
    """Times from the first to the last of ``n`` messages counted by ``count()``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def wait(self, count: Any, stall_s: float = 10.0) -> tuple[float, int]:
        """(seconds from the first message to the n-th, or to the last before a stall; count)."""
        while count() == 0:
            time.sleep(0.0005)
        t0 = last_change = time.perf_counter()
        last = -1
        while True:
            c = count()
            now = time.perf_counter()
            if c >= self.n:
                return now - t0, c
            if c != last:
                last, last_change = c, now
            elif now - last_change > stall_s:
                return last_change - t0, c
            time.sleep(0.001)


def bench_bare(port: int, n: int) -> tuple[float, int]:
    got = [0]

    def on_message(c: object, u: object, m: object) -> None:
        got[0] += 1

    c = client(port, BARE_CLIENT)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    dt, count = Clock(n).wait(lambda: got[0])
    c.disconnect()
    c.loop_stop()
    return count / dt, count


def bench_flow(port: int, n: int, receivers: int, qos: int, out: Path) -> tuple[float, int]:
    from edgeflow import Flow, agg, window
    from edgeflow.connectors import files as files_conn
    from edgeflow.connectors import mqtt
    from edgeflow.engine import RunOptions, run, stop
    from edgeflow.engine.counters import COUNTERS

    flow = Flow("bench-mqtt")
    spec = mqtt.source(
        TOPICS, port=port, qos=qos, fields=["temp", "hum", "id"], client_id=FLOW_CLIENT
    )
    spec.receivers = receivers  # set, not passed: the bench also runs on an edgeflow without it
    r = flow.source(spec, key="topic[1]", time="ts", lateness="5s")
    aggs = (agg.count(), agg.sum("id"), agg.mean("temp"), agg.max("hum"))
    r.window(window.tumbling("1s"), *aggs).to(files_conn.sink(out))
    result: dict[str, float] = {}

    def drive() -> None:
        result["dt"], got = Clock(n).wait(lambda: COUNTERS.snapshot().get("readings_in", 0))
        result["got"] = got
        stop()

    t = threading.Thread(target=drive)
    t.start()
    run(flow.plan(), RunOptions(workers=1, run_for_ns=600 * 10**9, snapshot_every_ns=200_000_000))
    t.join()
    return result["got"] / result["dt"], int(result["got"])


def exactly_once(out: Path, expected: dict[str, tuple[int, int]]) -> bool:
    import orjson

    got: dict[str, list[int]] = {k: [0, 0] for k in expected}
    for line in out.read_bytes().splitlines():
        rec = orjson.loads(line)
        acc = got.setdefault(rec["key"], [0, 0])
        acc[0] += int(rec["count"])
        acc[1] += int(rec["sum_id"])
    return {k: tuple(v) for k, v in got.items()} == expected


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="200,000 messages instead of 1,000,000")
    ap.add_argument("--receivers", type=int, default=1, help="the flow's MQTT receivers (1)")
    ap.add_argument("--qos", type=int, choices=(0, 1), default=1, help="QoS everywhere (1)")
    ap.add_argument("--publish", nargs=4, help=argparse.SUPPRESS)  # port topic file qos
    args = ap.parse_args()
    if args.publish:
        port_s, topic, path, qos = args.publish
        publisher(int(port_s), topic, Path(path), int(qos))
        return
    n = 200_000 if args.quick else 1_000_000
    n -= n % PUBLISHERS
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        broker = start_broker(d, port)
        try:
            files, expected = write_payloads(d, n)
            prime(port, BARE_CLIENT, TOPICS, args.qos)
            ids = [FLOW_CLIENT] + [f"{FLOW_CLIENT}-r{i}" for i in range(1, args.receivers)]
            flow_topic = TOPICS if args.receivers == 1 else f"$share/{FLOW_CLIENT}/{TOPICS}"
            for cid in ids:
                prime(port, cid, flow_topic, args.qos)
            t0 = time.perf_counter()
            publish(port, files, args.qos)
            print(f"published {n:,} messages at QoS {args.qos} in {time.perf_counter() - t0:.1f}s")
            base_per_s, base_got = bench_bare(port, n)
            print(
                f"bare paho subscriber (counts only)   : {base_got:>9,} of {n:,} msgs = {base_per_s:>9,.0f} msgs/s"
            )
            out = d / "windows.jsonl"
            flow_per_s, flow_got = bench_flow(port, n, args.receivers, args.qos, out)
            once = exactly_once(out, expected)
            print(
                f"edgeflow flow (parse, windows, file): {flow_got:>9,} of {n:,} msgs = {flow_per_s:>9,.0f} msgs/s "
                f"(receivers={args.receivers}, one worker); exactly once: {once}"
            )
            ratio = flow_per_s / base_per_s
            print(f"ratio: {ratio:.2f}x")
            emit(
                {
                    "bench": "mqtt_ingest",
                    "per_s": round(flow_per_s),
                    "baseline_per_s": round(base_per_s),
                    "ratio": round(ratio, 2),
                    "receivers": args.receivers,
                    "qos": args.qos,
                    "messages": n,
                    "flow_received": flow_got,
                    "baseline_received": base_got,
                    "exactly_once": once,
                }
            )
        finally:
            broker.send_signal(signal.SIGTERM)
            try:
                broker.wait(10)
            except subprocess.TimeoutExpired:
                broker.kill()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
