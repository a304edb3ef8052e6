"""pytest fixtures: one mock cluster and one PostgreSQL for the session."""

import logging

import pytest

from harness import MockCluster, extension_server

# kafka-python logs every reconnect while the tests take brokers down
logging.getLogger("kafka").setLevel(logging.CRITICAL)


@pytest.fixture(scope="session")
def kafka():
    cluster = MockCluster(brokers=3)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def pg(kafka):
    cluster = extension_server(kafka)
    yield cluster
    cluster.destroy()


@pytest.fixture
def settings(pg):
    """Changes kafka.* settings for one test and restores them after."""
    changed = set()

    def apply(**values):
        changed.update(values)
        pg.set_config(**values)

    yield apply
    if changed:
        pg.set_config(**{name: None for name in changed})


@pytest.fixture
def slow_brokers(kafka):
    """30 ms round trips to every broker, for one test."""
    for broker in (1, 2, 3):
        kafka.command(f"rtt {broker} 30")
    yield
    for broker in (1, 2, 3):
        kafka.command(f"rtt {broker} 0")
