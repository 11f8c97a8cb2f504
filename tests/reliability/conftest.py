"""Fixtures of the reliability matrix: a node served by ``ortho-node serve`` in a subprocess, shared by a module's tests, with one and with two
storage worker processes (``dicom.workers``): its log, audit events and data folder are what the tests read."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, select

from ortho_node.db.models import AuditEvent
from tests.delivery.conftest import fake_pacs  # noqa: F401 - fixture of test_delivery_crash
from tests.node_process import NodeProcess


class ServedNode:
    def __init__(self, process: NodeProcess, workers: int) -> None:
        self.process = process
        self.workers = workers
        self.port = process.port
        self.data_dir = process.data_dir

    def audit(self, kind: str) -> list[AuditEvent]:
        engine = create_engine(f"sqlite:///{self.data_dir / 'ortho-node.db'}")
        try:
            with engine.connect() as connection:
                return list(connection.execute(select(AuditEvent).where(AuditEvent.kind == kind)))
        finally:
            engine.dispose()

    def rss(self) -> int:
        """Resident bytes of the node and its worker processes."""
        import psutil

        node = psutil.Process(self.process.process.pid)
        return sum(p.memory_info().rss for p in (node, *node.children(recursive=True)))

    def threads(self) -> int:
        """Threads of the node and its worker processes."""
        import psutil

        node = psutil.Process(self.process.process.pid)
        return sum(p.num_threads() for p in (node, *node.children(recursive=True)))

    def alive(self) -> bool:
        from ortho_node.delivery.scu import echo

        return self.process.process.poll() is None and echo(self.process.remote, calling_ae="PROBE", timeout=5) == 0


@pytest.fixture(scope="module", params=[1, 2], ids=["workers1", "workers2"])
def served_node(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"node-w{request.param}")
    process = NodeProcess(folder / "data", extra_env={"ORTHO_NODE_DICOM_WORKERS": str(request.param)})
    yield ServedNode(process, request.param)
    process.stop()
