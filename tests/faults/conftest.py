"""Fixtures of the fault tier: a control plane of its own, which the tests break on purpose.

The fault cases kill and restart kube-apiserver, compact etcd, kill operators: they get a cluster
apart from the e2e tier's, so nothing they leave behind (extra nodes, a restarted apiserver) reaches
another test. Cases marked `long` (several fault cycles) run in `make faults` only; `make test` runs
the short ones. A failing case gets the tail of every component's log in its report.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster

_cluster: Cluster | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    run_long = os.environ.get("ARCHAUDIT_FAULTS_LONG") == "1"
    for item in items:
        if not item.path.is_relative_to(here):
            continue
        item.add_marker(pytest.mark.faults)
        if item.get_closest_marker("long") and not run_long:
            item.add_marker(pytest.mark.skip(reason="long fault case: `make faults` runs it"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if _cluster is not None and report.failed:
        title = f"control-plane logs (tail; full logs in {_cluster.log_dir})"
        report.sections.append((title, _cluster.tails(30)))
    return report


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """etcd, kube-apiserver, controller-manager, scheduler, kwok and the six fake nodes."""
    global _cluster
    c = Cluster(log_dir=tmp_path_factory.mktemp("fault-control-plane-logs"))
    c.start()
    _cluster = c
    try:
        yield c
    finally:
        _cluster = None
        c.stop()
