"""SIGKILL while a job runs: at restart the job is requeued and completes exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from ortho_node.db.models import AuditEvent, Job, StudyAssembly
from tests.assembly.factory import store, study
from tests.conftest import REPO
from tests.node_process import NodeProcess, free_port

FAST = {"ORTHO_NODE_SCHEDULING_SETTLE_TIME": "0.2", "ORTHO_NODE_SCHEDULING_QUIET_PERIOD": "0.5",
        "ORTHO_NODE_SCHEDULING_LONG_TIMEOUT": "1", "ORTHO_NODE_SCHEDULING_POLL_INTERVAL": "0.2",
        "ORTHO_NODE_STORAGE_MIN_FREE_MB": "0"}
# The blocking node decides only after the whole association: under CI load a sender can pause for more than
# FAST's half second between instances, and a study decided early gets a second job for its late instances.
PATIENT = FAST | {"ORTHO_NODE_SCHEDULING_QUIET_PERIOD": "3", "ORTHO_NODE_SCHEDULING_LONG_TIMEOUT": "10"}


def _wait_for(engine, predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(engine) as session:
            result = predicate(session)
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def _start_blocking_node(data_dir, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTHO_NODE_")} | PATIENT
    log = open(data_dir.parent / "blocking-node.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "tests.scheduling.slow_node", str(data_dir), str(port)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    engine_path = data_dir / "ortho-node.db"
    deadline = time.monotonic() + 60
    while not engine_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return process


def test_sigkill_while_job_runs_then_restart_completes_once(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    process = _start_blocking_node(data_dir, port)
    engine = create_engine(f"sqlite:///{data_dir / 'ortho-node.db'}")
    try:
        study_uid, planes = study()
        deadline = time.monotonic() + 60
        while True:  # the SCP comes up after the migrations
            try:
                store(port, [ds for group in planes for ds in group])
                break
            except AssertionError:
                assert time.monotonic() < deadline, "blocking node did not start"
                time.sleep(0.2)
        _wait_for(engine, lambda s: s.scalar(select(Job).where(Job.state == "running")))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    restarted = NodeProcess(data_dir, extra_env=FAST)
    try:
        job = _wait_for(engine, lambda s: s.scalar(select(Job).where(Job.state == "succeeded")))
    finally:
        restarted.stop()
    with Session(engine) as session:
        [job] = session.scalars(select(Job)).all()
        assert (job.state, job.attempts) == ("succeeded", 2)
        [record] = session.scalars(select(StudyAssembly)).all()
        assert record.job_id == job.id and record.joint == "knee"
        kinds = session.scalars(select(AuditEvent.kind).where(AuditEvent.study_instance_uid == study_uid)).all()
    assert kinds.count("job_requeued") == 1 and kinds.count("job_succeeded") == 1
    engine.dispose()
