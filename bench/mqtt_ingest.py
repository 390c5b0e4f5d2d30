"""MQTT ingest: publishers -> Mosquitto -> an edgeflow flow, vs a bare paho subscriber.

Several ``mosquitto_pub`` publishers send 1,000,000 small JSON readings (``--quick``:
200,000) at QoS 0 through a Mosquitto broker started for the run. In the same run and with
the same publishers: (1) an edgeflow flow (MQTT source -> parse -> tumbling 1 s windows ->
file sink) on one worker, (2) a bare paho-mqtt subscriber that only counts. Each rate is
messages received / seconds from the first publish until the last message arrived.

The last line is JSON: bench, per_s (flow), baseline_per_s (bare paho), ratio, messages,
flow_received, baseline_received (QoS 0 may drop under overload; both are reported).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLISHERS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_payloads(d: Path, n: int) -> list[Path]:
    per = n // PUBLISHERS
    t0 = (int(time.time()) - 30) * 1000
    files = []
    for j in range(PUBLISHERS):
        p = d / f"pub{j}.txt"
        p.write_text(
            "".join(
                f'{{"ts":{t0 + i // 100},"temp":{20 + (i % 97) / 10},"hum":{40 + i % 7}}}\n'
                for i in range(per)
            )
        )
        files.append(p)
    return files


def publish(port: int, files: list[Path]) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            ["mosquitto_pub", "-p", str(port), "-q", "0", "-t", f"bench/dev{j}/t", "-l"],
            stdin=p.open("rb"),
        )
        for j, p in enumerate(files)
    ]


def wait_for(count: object, n: int, stall_s: float = 5.0) -> float:
    """Seconds until count() == n, or until it stops growing for stall_s."""
    t0 = time.perf_counter()
    last, last_change = -1, t0
    while True:
        c = count()  # type: ignore[operator]
        now = time.perf_counter()
        if c >= n:
            return now - t0
        if c != last:
            last, last_change = c, now
        elif now - last_change > stall_s:
            return last_change - t0
        time.sleep(0.002)


def bench_bare(port: int, files: list[Path], n: int) -> tuple[float, int]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got = [0]

    def on_message(c: object, u: object, m: object) -> None:
        got[0] += 1

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare")
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe("bench/#", 0)
    c.loop_start()
    time.sleep(1)
    procs = publish(port, files)
    dt = wait_for(lambda: got[0], n)
    for p in procs:
        p.wait()
    c.disconnect()
    c.loop_stop()
    return got[0] / dt, got[0]


def bench_flow(port: int, files: list[Path], n: int, out: Path) -> tuple[float, int]:
    from edgeflow import Flow, agg, window
    from edgeflow.connectors import files as files_conn
    from edgeflow.connectors import mqtt
    from edgeflow.engine import RunOptions, run, stop
    from edgeflow.engine.counters import COUNTERS

    flow = Flow("bench-mqtt")
    r = flow.source(
        mqtt.source("bench/#", port=port, qos=0, fields=["temp", "hum"]),
        key="topic[1]",
        time="ts",
        lateness="5s",
    )
    r.window(window.tumbling("1s"), agg.count(), agg.mean("temp"), agg.max("hum")).to(
        files_conn.sink(out)
    )
    result: dict[str, float] = {}

    def drive() -> None:
        time.sleep(3)  # the receiver process starts and subscribes
        procs = publish(port, files)
        result["dt"] = wait_for(lambda: COUNTERS.snapshot().get("readings_in", 0), n)
        result["got"] = COUNTERS.snapshot().get("readings_in", 0)
        for p in procs:
            p.wait()
        stop()

    t = threading.Thread(target=drive)
    t.start()
    run(flow.plan(), RunOptions(workers=1, run_for_ns=600 * 10**9))
    t.join()
    return result["got"] / result["dt"], int(result["got"])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="200,000 messages instead of 1,000,000")
    args = ap.parse_args()
    n = 200_000 if args.quick else 1_000_000
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "MQTT_PORT": str(port), "MQTT_DIR": str(Path(d) / "broker")}
        subprocess.run(
            [str(ROOT / "scripts" / "mosquitto.sh"), "up"], env=env, check=True, capture_output=True
        )
        try:
            files = write_payloads(Path(d), n)
            base_per_s, base_got = bench_bare(port, files, n)
            print(
                f"bare paho subscriber (counts only) : {base_got:>9,} of {n:,} msgs = {base_per_s:>9,.0f} msgs/s"
            )
            flow_per_s, flow_got = bench_flow(port, files, n, Path(d) / "windows.jsonl")
            print(
                f"edgeflow flow (parse, windows, file): {flow_got:>9,} of {n:,} msgs = {flow_per_s:>9,.0f} msgs/s (one worker)"
            )
            ratio = flow_per_s / base_per_s
            print(f"ratio: {ratio:.2f}x")
            print(
                json.dumps(
                    {
                        "bench": "mqtt_ingest",
                        "per_s": round(flow_per_s),
                        "baseline_per_s": round(base_per_s),
                        "ratio": round(ratio, 2),
                        "messages": n,
                        "flow_received": flow_got,
                        "baseline_received": base_got,
                    }
                ),
                flush=True,
            )
        finally:
            subprocess.run(
                [str(ROOT / "scripts" / "mosquitto.sh"), "down"],
                env=env,
                check=False,
                capture_output=True,
            )


if __name__ == "__main__":
    main()
