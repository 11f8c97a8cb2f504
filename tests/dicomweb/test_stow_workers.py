"""STOW-RS served by several processes on the DICOMweb listener of its own (``dicomweb.workers``: two by default
where two cores are usable)."""

from __future__ import annotations

import base64
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import select

from ortho_node.config import ConfigError, load_settings
from ortho_node.db.models import AuditEvent, Instance
from tests.dicom_factory import mr_dataset
from tests.dicomweb.conftest import ROUTER, stow_node
from tests.dicomweb.stow_client import multipart, part10

WORKERS = {"dicomweb.own_listener": True, "dicomweb.port": 0, "dicomweb.workers": 2}


def _post(stow, datasets, headers) -> httpx.Response:
    body, content_type = multipart([part10(ds) for ds in datasets])
    return httpx.post(stow.url + "/studies", content=body, headers={"Content-Type": content_type, **headers},
                      timeout=60)


def _listen(node) -> list[str]:
    heard: list[str] = []
    node.intake.add_listener(type("Probe", (), {
        "instance_stored": lambda self, instance: heard.append(instance.sop_uid),
        "association_ended": lambda self, association_id, state: None,
    })())
    return heard


def test_workers_store_audit_and_tell_the_scheduler(start_node):
    stow = stow_node(start_node, **WORKERS)
    heard = _listen(stow.node)
    batches = [[mr_dataset(seed=10 * k + i, instance_number=i + 1) for i in range(5)] for k in range(4)]
    with ThreadPoolExecutor(4) as clients:  # concurrent requests: the kernel spreads them over the workers
        responses = list(clients.map(lambda batch: _post(stow, batch, stow.bearer("stow")), batches))
    assert [r.status_code for r in responses] == [200] * 4
    sent = {str(ds.SOPInstanceUID) for batch in batches for ds in batch}
    with stow.node.session_factory() as session:
        rows = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
        requests = list(session.scalars(select(AuditEvent).where(AuditEvent.kind == "stow_request")))
    assert set(rows) == sent and all((stow.node.settings.data_dir / row.file_path).is_file() for row in rows.values())
    assert [e.details["instances"] for e in requests] == [5] * 4
    deadline = time.monotonic() + 10
    while set(heard) != sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(heard) == sent  # the scheduler in the parent hears of every instance a worker stored
    # Every worker authenticates: the router's basic account stores, a wrong password is refused.
    assert _post(stow, [mr_dataset(seed=90)], _basic(*ROUTER)).status_code == 200
    assert _post(stow, [mr_dataset(seed=91)], _basic(ROUTER[0], "wrong")).status_code == 401


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(start_node):
    stow = stow_node(start_node, **WORKERS)
    pool = stow.node.dicomweb
    victim = next(iter(pool._workers.values())).process.pid
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = list(pool._workers.values())
        if victim not in [w.process.pid for w in workers] and all(w.process.is_alive() for w in workers):
            break
        time.sleep(0.1)
    assert victim not in [w.process.pid for w in pool._workers.values()]
    for k in range(4):
        assert _post(stow, [mr_dataset(seed=100 + k)], stow.bearer("stow")).status_code == 200


def test_workers_need_a_listener_of_their_own():
    with pytest.raises(ConfigError, match="dicomweb.workers > 1 needs dicomweb.own_listener"):
        load_settings(environ={}, overrides={"dicomweb.workers": 2})


def test_by_default_two_processes_serve_a_listener_of_its_own_where_two_cores_are_usable(start_node, tmp_path,
                                                                                          monkeypatch):
    from listeners.worker_pool import WorkerPool
    from ortho_node.config import schema

    monkeypatch.setattr(schema, "usable_cores", lambda: 2)
    # The built-in default (the fixture pins 1): two processes on the listener of its own ...
    stow = stow_node(start_node, **{"dicomweb.own_listener": True, "dicomweb.port": 0, "dicomweb.workers": 0})
    assert isinstance(stow.node.dicomweb, WorkerPool) and len(stow.node.dicomweb._workers) == 2
    assert _post(stow, [mr_dataset(seed=200)], stow.bearer("stow")).status_code == 200
    # ... and the node's own process on the console's port.
    console = stow_node(start_node, **{"dicomweb.workers": 0, "storage.data_dir": str(tmp_path / "console")})
    assert console.node.dicomweb is None  # no listener of its own: the console serves STOW-RS
    assert _post(console, [mr_dataset(seed=201)], console.bearer("stow")).status_code == 200
