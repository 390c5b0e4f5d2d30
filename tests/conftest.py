"""Session fixtures: a real Kafka broker (started by scripts/kafka.sh unless KAFKA_BOOTSTRAP is set)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.kafka_helpers import KafkaBroker


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
