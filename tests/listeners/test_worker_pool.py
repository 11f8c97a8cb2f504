"""Several storage worker processes behind one port (dicom.workers > 1)."""

from __future__ import annotations

import os
import signal
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from ortho_node.db.models import Instance
from ortho_node.delivery.scu import RemoteNode, echo, send_files
from tests.dicom_factory import mr_dataset, write


def _count(node) -> int:
    with node.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Instance))


def test_workers_store_relay_and_share_the_association_limit(start_node, tmp_path):
    node = start_node(**{"dicom.workers": 2, "dicom.max_associations": 2})
    notified = []
    node.intake.add_listener(type("Probe", (), {
        "instance_stored": lambda self, instance: notified.append(instance.sop_uid),
        "association_ended": lambda self, association_id, state: None,
    })())
    remote = RemoteNode("ORTHODIFF", "127.0.0.1", node.scp.port)
    files = [write(mr_dataset(seed=i, instance_number=i), tmp_path / f"{i}.dcm") for i in range(6)]
    for half in (files[:3], files[3:]):  # two associations, handed to the two workers in turn
        assert [r.status for r in send_files(remote, half, calling_ae="SCU")] == [0, 0, 0]
    assert _count(node) == 6
    deadline = time.monotonic() + 10
    while len(notified) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    with node.session_factory() as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
    assert set(notified) == stored  # the scheduler in the parent hears of every instance a worker stored

    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", node.scp.port, ae_title="ORTHODIFF") for _ in range(2)]
    assert all(a.is_established for a in held)
    third = ae.associate("127.0.0.1", node.scp.port, ae_title="ORTHODIFF")
    assert third.is_rejected  # the limit holds across worker processes
    for assoc in held:
        assoc.release()


def test_by_default_two_processes_receive_where_two_cores_are_usable(start_node, tmp_path, monkeypatch):
    from listeners.worker_pool import WorkerPool
    from ortho_node.config import schema

    monkeypatch.setattr(schema, "usable_cores", lambda: 2)
    node = start_node(**{"dicom.workers": 0})  # the built-in default (the fixture pins 1)
    assert isinstance(node.scp, WorkerPool) and len(node.scp._workers) == 2
    remote = RemoteNode("ORTHODIFF", "127.0.0.1", node.scp.port)
    files = [write(mr_dataset(seed=i, instance_number=i), tmp_path / f"{i}.dcm") for i in range(2)]
    assert [r.status for r in send_files(remote, files, calling_ae="SCU")] == [0, 0]
    assert _count(node) == 2

    monkeypatch.setattr(schema, "usable_cores", lambda: 1)
    one_core = start_node(**{"dicom.workers": 0, "storage.data_dir": str(tmp_path / "one-core")})
    assert not isinstance(one_core.scp, WorkerPool)  # in the node's own process


def test_killed_worker_is_restarted(start_node):
    node = start_node(**{"dicom.workers": 2})
    remote = RemoteNode("ORTHODIFF", "127.0.0.1", node.scp.port)
    victims = [w.process.pid for w in node.scp._workers.values()]
    os.kill(victims[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = [w.process.pid for w in node.scp._workers.values()]
        if victims[0] not in pids and all(w.process.is_alive() for w in node.scp._workers.values()):
            break
        time.sleep(0.1)
    assert victims[0] not in [w.process.pid for w in node.scp._workers.values()]
    assert all(echo(remote, calling_ae=f"SCU{i}") == 0 for i in range(4))


def test_ctrl_c_stops_a_node_with_workers_in_order(tmp_path):
    from tests.node_process import NodeProcess

    node = NodeProcess(tmp_path / "data", extra_env={"ORTHO_NODE_DICOM_WORKERS": "2"}, new_session=True)
    try:
        files = [write(mr_dataset(seed=i, instance_number=i), tmp_path / f"{i}.dcm") for i in range(2)]
        assert [r.status for r in send_files(node.remote, files, calling_ae="SCU")] == [0, 0]
        os.killpg(node.process.pid, signal.SIGINT)  # a terminal's Ctrl-C: every process of the group
        assert node.process.wait(timeout=60) == 0
    finally:
        node.stop()
    log = node.log()
    assert "with 2 worker processes" in log and "Storage SCP ORTHODIFF stopped" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    assert _group_ends(node.process.pid, within=10.0)  # no worker (nor multiprocessing's tracker) outlives it


def _group_ends(group: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _bump(counter, times: int) -> None:
    for _ in range(times):
        with counter.get_lock():
            counter.value += 1


def test_shared_association_counter_is_exact_across_processes():
    import multiprocessing

    from listeners.shared_counter import SharedCounter

    counter = SharedCounter.create()
    try:
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_bump, args=(counter, 300)) for _ in range(2)]
        for process in processes:
            process.start()
        _bump(counter, 300)
        for process in processes:
            process.join(60)
        assert counter.value == 900
    finally:
        counter.remove()


def test_a_worker_starts_without_pydicom_so_it_can_keep_numpy_out():
    # What a spawned worker imports before run_storage_worker runs: the parent's main module, the target's
    # module and its arguments' classes. None may import pydicom, or numpy comes with it (16 MB a worker).
    import subprocess
    import sys

    code = ("import sys, ortho_node.app.cli.main, ortho_node.app.storage_worker, ortho_node.config, listeners.shared_counter; "
            "print(sorted(m for m in ('pydicom', 'numpy', 'PIL') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
