"""Real nats-server processes for the collector's JetStream backend (see tests/nats_cluster.py).

``nats_cluster``: three JetStream nodes, one per test module; streams are shared by its
tests, so each test uses its own station and record ids. ``nats_single``: one node, for
``replicas=1`` and for stream settings a test changes.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.nats_cluster import NatsCluster


@pytest.fixture(scope="module")
def nats_cluster() -> Iterator[NatsCluster]:
    with NatsCluster(3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def nats_single() -> Iterator[NatsCluster]:
    with NatsCluster(1) as cluster:
        yield cluster
