"""SIGKILL of a delivering node, then a restart: nothing lost, nothing acknowledged sent again."""

from __future__ import annotations

import time

from sqlalchemy import select

from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import DeliveryItem
from ortho_node.clock import RetryPolicy, SystemClock
from ortho_node.delivery.queue import DeliveryQueue, ResultFile
from ortho_node.config import DestinationSettings
from tests.delivery.conftest import make_result_files
from tests.node_process import NodeProcess


def _states(sessions) -> dict[str, str]:
    with sessions() as session:
        return {item.sop_instance_uid: item.state for item in session.scalars(select(DeliveryItem))}


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_sigkill_during_delivery_then_restart_delivers_once(tmp_path, fake_pacs):
    pacs = fake_pacs(delay=0.3)
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'ortho-node.db'}")
    migrations.upgrade(engine)
    sessions = make_session_factory(engine)
    files = make_result_files(tmp_path / "results", 8)
    destination = DestinationSettings(name="PACS", ae_title="PACS", host="127.0.0.1", port=pacs.port)
    DeliveryQueue(sessions, SystemClock(), RetryPolicy()).enqueue([ResultFile.read(f) for f in files],
                                                                  [destination])
    env = {"ORTHO_NODE_DESTINATIONS": f"PACS=PACS@127.0.0.1:{pacs.port}",
           "ORTHO_NODE_DELIVERY_POLL_INTERVAL": "0.2", "ORTHO_NODE_DELIVERY_INITIAL_BACKOFF": "0.5"}

    node = NodeProcess(data, extra_env=env)
    assert _wait(lambda: sum(pacs.received.values()) >= 3, 30), node.log()[-2000:]
    node.kill()  # mid-association: one C-STORE is waiting for its response
    acknowledged = {uid for uid, state in _states(sessions).items() if state == "delivered"}
    assert 2 <= len(acknowledged) < len(files)

    node = NodeProcess(data, extra_env=env)
    try:
        assert _wait(lambda: set(_states(sessions).values()) == {"delivered"}, 60), node.log()[-2000:]
    finally:
        node.stop()
    engine.dispose()
    assert set(pacs.stored) == set(_states(sessions))  # nothing lost
    assert all(pacs.received[uid] == 1 for uid in acknowledged)  # nothing acknowledged sent twice
    # Only the object in flight at the kill (never acknowledged) may arrive again, with the same SOP Instance
    # UID, which a PACS stores once.
    assert sum(pacs.received.values()) - len(files) <= 1
