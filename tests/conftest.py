"""Session fixtures: a real Kafka broker (started by scripts/kafka.sh unless KAFKA_BOOTSTRAP is set)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.kafka_helpers import KafkaBroker
from tests.mqtt_helpers import Mosquitto


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka")).up()
    try:
        yield broker.bootstrap
    finally:
        broker.down()


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker of this test's own, which the test may stop and start (outage tests)."""
    broker = KafkaBroker(tmp_path_factory.mktemp("own-kafka")).up()
    try:
        yield broker
    finally:
        broker.down()


@pytest.fixture(scope="session")
def mqtt_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real Mosquitto broker on 127.0.0.1 (scripts/mosquitto.sh), stopped by pid afterwards."""
    broker = Mosquitto(tmp_path_factory.mktemp("mqtt")).up()
    try:
        yield broker.port
    finally:
        broker.down()


SERVER_FIXTURES = {"kafka_bootstrap": "kafka", "own_broker": "kafka", "mqtt_port": "mqtt"}
_passed: dict[str, int] = {"kafka": 0, "mqtt": 0}
_collected: dict[str, int] = {"kafka": 0, "mqtt": 0}


CLI_RUNNERS = frozenset({"edgeflow", "popen_edgeflow"})


def _runs_cli(item: pytest.Item) -> bool:
    """Does the test (or a helper function of its module that it calls) run the edgeflow CLI?"""
    fn = getattr(item, "function", None)
    code = getattr(fn, "__code__", None)
    if code is None:
        return False
    module = getattr(item, "module", None)
    names = set(code.co_names)
    seen: set[str] = set()
    while names - seen:
        name = (names - seen).pop()
        seen.add(name)
        if name in CLI_RUNNERS:
            return True
        helper = getattr(module, name, None)
        inner = getattr(helper, "__code__", None)
        if inner is not None and getattr(helper, "__module__", None) == getattr(
            module, "__name__", ""
        ):
            names |= set(inner.co_names)
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by what they need: `broker` (a real server), `e2e` (the CLI in a subprocess)."""
    for item in items:
        for fx in getattr(item, "fixturenames", ()):
            if fx in SERVER_FIXTURES:
                _collected[SERVER_FIXTURES[fx]] += 1
                item.user_properties.append(("server", SERVER_FIXTURES[fx]))
                item.add_marker(pytest.mark.broker)
                break
        if _runs_cli(item):
            item.add_marker(pytest.mark.e2e)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        for name, value in report.user_properties:
            if name == "server":
                _passed[str(value)] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI, a full run that passed no test against a real server is a failure, not a pass."""
    filtered = bool(session.config.option.keyword or session.config.option.markexpr)
    if not os.environ.get("CI") or exitstatus != 0 or filtered:
        return
    for server, n in _passed.items():
        if n == 0:
            session.exitstatus = 1
            print(
                f"\nCI: {_collected[server]} tests need a real {server} server and none passed; they must run in CI."
            )
