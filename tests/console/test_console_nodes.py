"""Issue 25: the processes sharing the database on the console's Nodes page and at /api/v1/nodes (the seeded node
plus a processor that missed its heartbeats and a receiver that stopped, registered on its database), and the
page's times in the console's time zone."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import requests
from sqlalchemy import select

from listeners.console import pages
from ortho_node.cluster.registry import NodeIdentity, NodeIsLive, NodeRegistry, NodeState, NodeStatus
from ortho_node.cluster.roles import Role
from ortho_node.db.models import AuditEvent
from ortho_node.scheduling.timers import ManualTime
from tests.console.forms import login
from tests.console.seeded import PASSWORD, USER

GPU = NodeIdentity("gpu-7", Role.PROCESS, "gpu-host", 4242, "0.1.0", "2.3.0", "NVIDIA H100")
RECEIVER = NodeIdentity("recv-2", Role.RECEIVE, "dicom-host", 17, "0.1.0")


@pytest.fixture(scope="module")
def browser(seeded) -> requests.Session:
    session = requests.Session()
    assert login(session, seeded.console_url, USER, PASSWORD).status_code == 200
    return session


@pytest.fixture
def others(seeded):
    """A processor whose last heartbeat was two minutes ago (by the node's clock) and a receiver that stopped; both
    forgotten afterwards (the seeded node is shared with other tests)."""
    node = seeded.node
    then = node.scheduler.time.now() - dt.timedelta(seconds=120)
    registry = NodeRegistry(node.session_factory, ManualTime(start=then), missed_heartbeats=3)
    for identity in (GPU, RECEIVER):
        registry.register(identity, heartbeat_interval=10.0)
    registry.stopped(RECEIVER.node_id)
    yield
    for node_id in (GPU.node_id, RECEIVER.node_id):
        node.registry.forget(node_id, by="test")


def _rows(html: str) -> dict[str, str]:
    """Node id -> its table row's markup."""
    rows = re.findall(r"<tr[^>]*>.*?</tr>", html, flags=re.S)
    return {match.group(1): row for row in rows if (match := re.search(r'<td class="uid">([^<]+)</td>', row))}


def test_nodes_page_lists_each_process_and_highlights_missed_ones(seeded, browser, others):
    response = browser.get(f"{seeded.console_url}/nodes", timeout=10)
    assert response.status_code == 200 and '<a href="/nodes">Nodes</a>' in response.text
    rows = _rows(response.text)
    own = seeded.node.lease.node_id
    assert list(rows) == [own, GPU.node_id, RECEIVER.node_id]  # live first, then missed, then stopped
    assert 'class="missed"' in rows[GPU.node_id] and "missed 12 heartbeats" in rows[GPU.node_id]
    assert all('class="missed"' not in rows[n] for n in (own, RECEIVER.node_id))
    assert "NVIDIA H100" in rows[GPU.node_id] and "2.3.0" in rows[GPU.node_id] and "(pid 4242)" in rows[GPU.node_id]
    assert "live" in rows[own] and "stopped" in rows[RECEIVER.node_id] and "no model" in rows[RECEIVER.node_id]
    beat = seeded.node.registry.nodes()[1].last_heartbeat_at
    assert f"{beat:%Y-%m-%d %H:%M:%S} UTC" in rows[GPU.node_id]


def test_nodes_api(seeded, browser, others):
    response = browser.get(f"{seeded.console_url}/api/v1/nodes", timeout=10)
    assert response.status_code == 200
    listing = response.json()
    states = {n["node_id"]: (n["role"], n["state"], n["model_version"], n["gpu"]) for n in listing["items"]}
    assert states == {seeded.node.lease.node_id: ("all", "live", None, None),  # the seeded predictor has no card
                      GPU.node_id: ("process", "missed", "2.3.0", "NVIDIA H100"),
                      RECEIVER.node_id: ("receive", "stopped", None, None)}
    assert listing["count"] == 3
    stopped = next(n for n in listing["items"] if n["node_id"] == RECEIVER.node_id)
    assert dt.datetime.fromisoformat(stopped["stopped_at"]).utcoffset() == dt.timedelta(0)
    assert requests.get(f"{seeded.console_url}/api/v1/nodes", timeout=10).status_code == 401


def test_a_live_node_is_not_forgotten_and_forgetting_is_audited(seeded, others):
    registry = seeded.node.registry
    with pytest.raises(NodeIsLive, match="is live"):
        registry.forget(seeded.node.lease.node_id, by="test")
    forgotten = registry.forget(GPU.node_id, by="dr-ops")
    assert forgotten.state is NodeState.MISSED
    registry.register(GPU, heartbeat_interval=10.0)  # back for the fixture's clean-up, now live
    with seeded.node.session_factory() as session:
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.kind == "node_forgotten")
                                  .order_by(AuditEvent.id.desc()).limit(1))
    assert event.message == "node gpu-7 (process on gpu-host, missed) removed from the nodes table by dr-ops"
    registry.stopped(GPU.node_id)


def test_heartbeat_times_in_the_consoles_time_zone():
    winter = dt.datetime(2026, 1, 15, 8, 0, tzinfo=dt.timezone.utc)
    node = NodeStatus("gpu-7", "process", "gpu-host", 1, "0.1.0", None, None, winter, winter, None,
                      NodeState.LIVE, 0)
    page = pages.nodes_page([node], user="admin", tz="Europe/Zurich")
    assert "2026-01-15 09:00:00 CET" in page and "Times in Europe/Zurich" in page
    assert "No process has registered" in pages.nodes_page([], user="admin")
