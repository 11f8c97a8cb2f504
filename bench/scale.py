"""Scale-out benchmark (issue 25): processes of the node sharing one PostgreSQL database.

1. Throughput: one receiver and 1, then 2, processors (``ortho-node serve --role ...`` subprocesses, the bundled
   model on the CPU, one torch thread each) on a fresh database, Orthanc as the PACS; ``--studies`` small
   synthetic knee studies (3 planes x 8 slices of 32 x 32) sent with dcmtk ``storescu`` to the receiver and
   queued before the processors start. Studies per hour from the first job started to the last result
   acknowledged by Orthanc: what the processors drain, not how fast one sender delivers studies.
   Goal: 2 processors >= 1.7x one (on a machine with a core per processor to spare).
2. Claim latency with ``--queued`` jobs waiting: two claimers (separate processes) drain them one claim at a time;
   each claim transaction's time (p50, p95). Then the wake-up: jobs queued one at a time to an idle processor
   that LISTENs, from the queueing commit (NOTIFY) to the job claimed. Goal: p95 < 100 ms.
3. Coordination alone: ``--claimers`` processes that claim, start and finish jobs with no inference (each with
   its own heartbeat renewing its leases every second) for ``--seconds``: claims, heartbeats and audit rows per
   second that one PostgreSQL sustains.

Prints figures, asserts nothing. Needs PostgreSQL (``--database`` or $ORTHO_TEST_POSTGRES_URL: an admin URL; a
fresh database is made per part and dropped), dcmtk and Orthanc for part 1.

    python3 bench/scale.py [--studies 20] [--processors 1,2] [--queued 1000] [--claimers 4] [--seconds 30]
                           [--parts throughput,claims,coordination]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import func, select, text  # noqa: E402

from ortho_node.audit.views import percentile  # noqa: E402
from ortho_node.clock import RetryPolicy, SystemClock  # noqa: E402
from ortho_node.cluster.lease import Lease  # noqa: E402
from ortho_node.cluster.registry import NodeIdentity, NodeRegistry  # noqa: E402
from ortho_node.cluster.roles import Role  # noqa: E402
from ortho_node.cluster.wakeup import Channel, Listener, notify  # noqa: E402
from ortho_node.db import migrations  # noqa: E402
from ortho_node.db.engine import make_engine, make_session_factory  # noqa: E402
from ortho_node.db.models import AuditEvent, DeliveryItem, Job  # noqa: E402
from ortho_node.scheduling.jobs import JobQueue  # noqa: E402
from ortho_node.scheduling.timers import SystemTime  # noqa: E402
from tests.cluster.conftest import queue_jobs  # noqa: E402
from tests.conftest import _fresh_postgres_database  # noqa: E402

LEASE = dt.timedelta(seconds=30)


def fresh_database(admin_url: str):
    """A context of a fresh, migrated database's URL (dropped afterwards)."""
    from contextlib import contextmanager

    @contextmanager
    def made():
        databases = _fresh_postgres_database(admin_url)
        url = next(databases)
        engine = make_engine(url)
        migrations.upgrade(engine)
        engine.dispose()
        try:
            yield url
        finally:
            next(databases, None)

    return made()


# -- 1. throughput -----------------------------------------------------------------------------------------------

def throughput(admin_url: str, processors: int, studies: int, folder: Path) -> float:
    """Studies per hour that ``processors`` drain: every study is received and queued first, so the senders,
    the receiver and the completeness timers do not pace the processors (live, one ``storescu`` after another
    delivered a study every ~1.4 s on this machine, less than two processors take)."""
    from tests.cluster.processes import ServeProcess
    from tests.reports.orthanc import Orthanc

    folders = _write_studies(studies, folder)
    with fresh_database(admin_url) as url:
        pacs = Orthanc(folder / "orthanc")
        env = {"ORTHO_NODE_DATABASE_URL": url,
               "ORTHO_NODE_DESTINATIONS": f"PACS={Orthanc.AE_TITLE}@127.0.0.1:{pacs.dicom_port}",
               "ORTHO_NODE_CLUSTER_HEARTBEAT_INTERVAL": "5"}
        (folder / "logs").mkdir()
        receiver = ServeProcess("recv-1", "receive", folder / "data", folder / "logs", env)
        nodes = [receiver]
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        try:
            receiver.start().wait_ready()
            _send_all(receiver, folders)
            _wait(sessions, lambda session: session.scalar(select(func.count(Job.id))) == studies,
                  60 + 2 * studies, "studies queued")
            nodes += [ServeProcess(f"proc-{k + 1}", "process", folder / "data", folder / "logs", env)
                      for k in range(processors)]
            for node in nodes[1:]:
                node.start()
            _wait(sessions, lambda session: _drained(session, studies), 60 * studies, "studies delivered")
            with sessions() as session:
                first = session.scalar(select(func.min(Job.started_at)))
                last = session.scalar(select(func.max(DeliveryItem.delivered_at)))
        finally:
            engine.dispose()
            for node in nodes:
                node.stop()
            pacs.stop()
    return studies / (last - first).total_seconds() * 3600


def _write_studies(studies: int, folder: Path) -> list[Path]:
    from tests.assembly.factory import study
    from tests.dicom_factory import write

    folders = []
    for n in range(studies):
        _, planes = study()
        for k, ds in enumerate(ds for plane in planes for ds in plane):
            write(ds, folder / f"study-{n}" / f"{k}.dcm")
        folders.append(folder / f"study-{n}")
    return folders


def _send_all(receiver, folders: list[Path]) -> None:
    from tests.cluster.test_scale_out import _storescu

    for path in folders:
        try:
            _storescu(receiver.port, path)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = (exc.stderr or b"").decode(errors="replace")[-800:]
            raise RuntimeError(f"storescu of {path.name} failed: {exc}: {output}\nreceiver log: "
                               f"{receiver.log()[-1500:]}") from None


def _drained(session, studies: int) -> bool:
    done = session.scalar(select(func.count(Job.id)).where(Job.state == "succeeded"))
    pending = session.scalar(select(func.count(DeliveryItem.id)).where(DeliveryItem.state != "delivered"))
    return done == studies and pending == 0


def _wait(sessions, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:
            if condition(session):
                return
        time.sleep(0.25)
    raise RuntimeError(f"timed out waiting for every study: {what}")


# -- 2. claim latency ----------------------------------------------------------------------------------------------

def _drain(url: str, node: str, start, results) -> None:
    engine = make_engine(url)
    queue = JobQueue(make_session_factory(engine), SystemTime(), RetryPolicy(), lease=Lease(node, LEASE, True))
    start.wait()
    times = []
    while True:
        began = time.perf_counter()
        jobs = queue.claim(1)
        times.append(time.perf_counter() - began)
        if not jobs:
            break
        queue.succeed(jobs[0])
    results.put(times[:-1])
    engine.dispose()


def claim_latency(admin_url: str, queued: int) -> tuple[list[float], list[float]]:
    with fresh_database(admin_url) as url:
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        queue_jobs(sessions, queued, at=SystemClock().now() - dt.timedelta(seconds=1))
        context = multiprocessing.get_context("spawn")
        start, results = context.Barrier(2), context.Queue()
        workers = [context.Process(target=_drain, args=(url, f"claimer-{n}", start, results)) for n in (1, 2)]
        for worker in workers:
            worker.start()
        claims = results.get(timeout=600) + results.get(timeout=600)
        for worker in workers:
            worker.join()
        wakeups = _wakeup_latency(engine, sessions)
        engine.dispose()
    return claims, wakeups


def _wakeup_latency(engine, sessions, count: int = 100) -> list[float]:
    """Jobs queued one at a time to an idle processor that claims on NOTIFY: queue commit -> claimed."""
    queue = JobQueue(sessions, SystemTime(), RetryPolicy(), lease=Lease("idle", LEASE, True))
    claimed = threading.Event()

    def on_notify() -> None:
        for job in queue.claim(4):
            queue.succeed(job)
            claimed.set()

    listener = Listener(engine, {Channel.JOBS: on_notify}, check_every=0.5)
    listener.start()
    listener.listening.wait(10)
    latencies = []
    for n in range(count):
        claimed.clear()
        began = time.perf_counter()
        job_id = _queue_one(sessions, n, SystemClock().now())  # the job and its NOTIFY commit together
        if not claimed.wait(5):
            raise RuntimeError(f"job {job_id} not claimed within 5 s of its NOTIFY")
        latencies.append(time.perf_counter() - began)
        time.sleep(0.02)
    listener.stop()
    return latencies


def _queue_one(sessions, n: int, at: dt.datetime) -> int:
    """A pending job and its NOTIFY in one transaction, as ``JobQueue.enqueue`` queues one."""
    from ortho_node.db.models import Study

    with sessions.begin() as session:
        study = Study(study_instance_uid=f"1.2.826.0.1.3680043.10.4321.{n}", first_received_at=at, last_received_at=at)
        session.add(study)
        session.flush()
        job = Job(study_id=study.id, state="pending", reason="bench", last_instance_id=0, attempts=0,
                  next_attempt_at=at, created_at=at)
        session.add(job)
        session.flush()
        notify(session, Channel.JOBS)
        return job.id


# -- 3. coordination alone -----------------------------------------------------------------------------------------

def _coordinate(url: str, node: str, seconds: float, start, results) -> None:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    registry = NodeRegistry(sessions, SystemClock(), missed_heartbeats=3)
    registry.register(NodeIdentity(node, Role.PROCESS, "bench", os.getpid(), "bench"), heartbeat_interval=1.0)
    queue = JobQueue(sessions, SystemTime(), RetryPolicy(), lease=Lease(node, LEASE, True))
    start.wait()
    claims = heartbeats = 0
    end = time.monotonic() + seconds
    next_beat = time.monotonic() + 1.0
    while time.monotonic() < end:
        jobs = queue.claim(4)
        for job in jobs:
            queue.succeed(job)
        claims += len(jobs)
        if time.monotonic() >= next_beat:  # the heartbeat: node row and lease renewal
            registry.beat(node)
            queue.renew()
            heartbeats += 1
            next_beat += 1.0
        if not jobs:
            time.sleep(0.01)
    results.put((claims, heartbeats))
    engine.dispose()


def coordination(admin_url: str, claimers: int, seconds: float) -> dict[str, float]:
    with fresh_database(admin_url) as url:
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        queue_jobs(sessions, int(2000 * seconds / 10) + 2000, at=SystemClock().now() - dt.timedelta(seconds=1))
        with sessions() as session:
            audit_before = session.scalar(select(func.count(AuditEvent.id)))
        context = multiprocessing.get_context("spawn")
        start, results = context.Barrier(claimers + 1), context.Queue()
        workers = [context.Process(target=_coordinate, args=(url, f"coord-{n}", seconds, start, results))
                   for n in range(claimers)]
        for worker in workers:
            worker.start()
        start.wait()
        began = time.monotonic()
        totals = [results.get(timeout=seconds + 120) for _ in workers]
        elapsed = time.monotonic() - began
        for worker in workers:
            worker.join()
        with sessions() as session:
            audit_rows = session.scalar(select(func.count(AuditEvent.id))) - audit_before
            left = session.scalar(select(func.count(Job.id)).where(Job.state == "pending"))
        with engine.connect() as connection:
            size = connection.scalar(text("SELECT pg_database_size(current_database())"))
        engine.dispose()
    claims = sum(c for c, _ in totals)
    return {"claims/s": claims / elapsed, "heartbeats/s": sum(h for _, h in totals) / elapsed,
            "audit rows/s": audit_rows / elapsed, "jobs left": left, "database MB": size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default=os.environ.get("ORTHO_TEST_POSTGRES_URL"),
                        help="PostgreSQL admin URL (default $ORTHO_TEST_POSTGRES_URL)")
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--processors", default="1,2")
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--claimers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--parts", default="throughput,claims,coordination")
    args = parser.parse_args()
    if not args.database:
        parser.error("a PostgreSQL admin URL is needed: --database or $ORTHO_TEST_POSTGRES_URL")
    parts = set(args.parts.split(","))
    if "throughput" in parts:
        rates = {}
        for count in (int(p) for p in args.processors.split(",")):
            with tempfile.TemporaryDirectory(prefix="scale-bench-") as folder:
                rates[count] = throughput(args.database, count, args.studies, Path(folder))
            print(f"throughput: {count} processor(s), {args.studies} studies: {rates[count]:.0f} studies/hour")
        if 1 in rates and 2 in rates:
            print(f"throughput: 2 processors / 1 = {rates[2] / rates[1]:.2f}x (goal >= 1.7x)")
    if "claims" in parts:
        claims, wakeups = claim_latency(args.database, args.queued)
        print(f"claim with {args.queued} queued, 2 claimers: {len(claims)} claims, p50 "
              f"{statistics.median(claims) * 1000:.1f} ms, p95 {percentile(claims, 95) * 1000:.1f} ms")
        print(f"ready -> started (NOTIFY to an idle processor), {len(wakeups)} jobs: p50 "
              f"{statistics.median(wakeups) * 1000:.1f} ms, p95 {percentile(wakeups, 95) * 1000:.1f} ms "
              f"(goal p95 < 100 ms)")
    if "coordination" in parts:
        figures = coordination(args.database, args.claimers, args.seconds)
        print(f"coordination only, {args.claimers} processes for {args.seconds:g} s: "
              + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
