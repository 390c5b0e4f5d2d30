"""A real Mosquitto broker for tests (scripts/mosquitto.sh on a free port) and paho helpers."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import service_script
from tests.kafka_helpers import free_port


class Mosquitto:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / f"mosquitto-{self.port}"

    def _script(self, action: str) -> None:
        service_script(
            "mosquitto.sh", action, {"MQTT_PORT": str(self.port), "MQTT_DIR": str(self.dir)}
        )

    def up(self) -> Mosquitto:
        self._script("up")
        return self

    def down(self) -> None:
        self._script("down")


def client(port: int, client_id: str = "", clean: bool = True):  # type: ignore[no-untyped-def]
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def prime_session(port: int, client_id: str, topics: list[str]) -> None:
    """Create the flow's persistent session and subscriptions, so the broker queues for it."""
    c = client(port, client_id, clean=False)
    c.subscribe([(t, 1) for t in topics])[1]
    import time

    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()


def publish_all(port: int, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    c = client(port)
    infos = [c.publish(topic, payload, qos=qos) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published()
    c.disconnect()
    c.loop_stop()
