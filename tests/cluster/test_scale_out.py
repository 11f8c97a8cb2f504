"""Issue 25 end to end: two receivers and two processors, separate ``ortho-node serve`` processes on one
PostgreSQL database and one data folder, Orthanc as the PACS, studies sent with dcmtk ``storescu``.

20 small synthetic knee studies (3 planes x 8 slices of 32 x 32), half to each receiver, one split across both;
receivers queue them and never process (no processor runs yet), then two processors start and pick the queued
work up; one is SIGKILLed while it runs a job. Every study is analysed once (one job, one result set), every
result object is acknowledged by Orthanc exactly once, and the audit trail shows no job and no delivery item
ever claimed by two processes at once: the killed processor's work went to the other only after its lease
expired. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from sqlalchemy import select

from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import AuditEvent, DeliveryItem, Job, Study, StudyAssembly, StudyResult
from tests.assembly.factory import study
from tests.cluster.processes import ServeProcess
from tests.conftest import dcmtk
from tests.dicom_factory import write
from tests.reports.orthanc import ORTHANC, Orthanc

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]

STUDIES = 20


def _write_studies(folder: Path) -> tuple[list[tuple[str, Path]], tuple[str, Path, Path]]:
    """19 whole studies (UID, folder) and one split (UID, sagittal + coronal folder, axial folder)."""
    whole = []
    for n in range(STUDIES - 1):
        uid, planes = study()
        for k, ds in enumerate(ds for plane in planes for ds in plane):
            write(ds, folder / f"study-{n}" / f"{k}.dcm")
        whole.append((uid, folder / f"study-{n}"))
    uid, planes = study()
    for part, datasets in (("a", planes[0] + planes[1]), ("b", planes[2])):
        for k, ds in enumerate(datasets):
            write(ds, folder / f"split-{part}" / f"{k}.dcm")
    return whole, (uid, folder / "split-a", folder / "split-b")


def _storescu(port: int, folder: Path) -> None:
    subprocess.run([dcmtk("storescu"), "-aet", "MR1", "-aec", "ORTHODIFF", "127.0.0.1", str(port), "+sd",
                    str(folder)], check=True, capture_output=True, timeout=60)


def _wait(condition, timeout: float, what: str, logs) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; logs: {logs()}")


def test_two_receivers_two_processors_one_killed_every_study_once(postgres_url, tmp_path):
    if not ORTHANC.exists():
        pytest.fail("Orthanc missing: install the Debian packages orthanc and orthanc-dicomweb")
    whole, (split_uid, split_a, split_b) = _write_studies(tmp_path / "studies")
    engine = make_engine(postgres_url)
    sessions = make_session_factory(engine)
    pacs = Orthanc(tmp_path / "orthanc")
    env = {"ORTHO_NODE_DATABASE_URL": postgres_url,
           "ORTHO_NODE_DESTINATIONS": f"PACS={Orthanc.AE_TITLE}@127.0.0.1:{pacs.dicom_port}"}
    data, logs_dir = tmp_path / "data", tmp_path / "logs"
    logs_dir.mkdir()
    nodes = {name: ServeProcess(name, role, data, logs_dir, env)
             for name, role in (("recv-1", "receive"), ("recv-2", "receive"), ("proc-1", "process"),
                                ("proc-2", "process"))}

    def logs() -> str:
        return "\n".join(f"--- {name}\n{node.log()[-1500:]}" for name, node in nodes.items())

    def jobs() -> list[Job]:
        with sessions() as session:
            return list(session.scalars(select(Job)))

    try:
        receivers = [nodes["recv-1"].start(), nodes["recv-2"].start()]
        for receiver in receivers:
            receiver.wait_ready()
        # Receivers only: every study is stored, decided complete and queued, none is processed.
        senders = [threading.Thread(target=lambda part: [_storescu(receivers[n % 2].port, folder)
                                                         for n, (_, folder) in enumerate(whole) if n % 2 == part],
                                    args=(part,)) for part in (0, 1)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(120)
        _wait(lambda: len(jobs()) == len(whole), 60, "19 queued jobs", logs)
        assert {job.state for job in jobs()} == {"pending"}

        processors = [nodes["proc-1"].start(), nodes["proc-2"].start()]
        # The split study while the processors start: sagittal and coronal to one receiver, axial to the other.
        both = [threading.Thread(target=_storescu, args=(receivers[0].port, split_a)),
                threading.Thread(target=_storescu, args=(receivers[1].port, split_b))]
        for sender in both:
            sender.start()
        for sender in both:
            sender.join(60)
        for processor in processors:
            processor.wait_ready()

        def proc1_running() -> bool:
            return any(job.state == "running" and job.claimed_by == "proc-1" for job in jobs())

        _wait(proc1_running, 120, "proc-1 to run a job", logs)
        nodes["proc-1"].kill()
        [interrupted] = [job for job in jobs() if job.state == "running" and job.claimed_by == "proc-1"]

        def all_delivered() -> bool:
            with sessions() as session:
                items = session.scalars(select(DeliveryItem.state)).all()
                succeeded = session.scalars(select(Job.id).where(Job.state == "succeeded")).all()
            return len(succeeded) == STUDIES and items and set(items) == {"delivered"}

        _wait(all_delivered, 300, "every study delivered", logs)
    finally:
        for node in nodes.values():
            node.stop()
        pacs_uids = {uid: _pacs_sop_uids(pacs, uid) for uid in [u for u, _ in whole] + [split_uid]}
        pacs.stop()

    with sessions() as session:
        all_jobs = session.scalars(select(Job).order_by(Job.id)).all()
        studies = {s.id: s.study_instance_uid for s in session.scalars(select(Study))}
        results = session.scalars(select(StudyResult)).all()
        assemblies = session.scalars(select(StudyAssembly)).all()
        items = session.scalars(select(DeliveryItem)).all()
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    engine.dispose()

    # Every study analysed once: one job, one assembly, one result set, the split study with its three planes.
    assert len(studies) == STUDIES
    assert Counter(job.study_id for job in all_jobs) == Counter({sid: 1 for sid in studies})
    assert {job.state for job in all_jobs} == {"succeeded"}
    assert sorted(r.study_instance_uid for r in results) == sorted(studies.values())
    assert len(assemblies) == STUDIES
    [split] = [a for a in assemblies if studies[a.study_id] == split_uid]
    assert sorted(split.summary["planes"]) == ["axial", "coronal", "sagittal"]

    # The killed processor's job was taken over by the other after its lease, and finished there.
    [takeover] = [e for e in events if e.kind == "job_taken_over"]
    assert takeover.details["job_id"] == interrupted.id and takeover.details["from_node"] == "proc-1"
    assert takeover.details["node"] == "proc-2"
    assert next(job for job in all_jobs if job.id == interrupted.id).claimed_by == "proc-2"
    assert {job.claimed_by for job in all_jobs} <= {"proc-1", "proc-2"}  # receivers never process

    # Every result object acknowledged exactly once, and held by the PACS.
    delivered = Counter(e.sop_instance_uid for e in events
                        if e.kind == "delivery_attempt" and e.details["outcome"] == "delivered")
    assert set(delivered.values()) == {1} and set(delivered) == {item.sop_instance_uid for item in items}
    for result in results:
        wanted = {obj["sop_instance_uid"] for obj in result.objects}
        assert wanted and wanted <= pacs_uids[result.study_instance_uid]

    _assert_claims_never_overlap(events)


def _pacs_sop_uids(pacs: Orthanc, study_uid: str) -> set[str]:
    return {tags["SOPInstanceUID"] for tags in pacs.instances_of_study(study_uid)}


def _assert_claims_never_overlap(events: list[AuditEvent]) -> None:
    """From the audit trail alone: a job or delivery item is claimed again only after its holder finished with
    it, or by a takeover of proc-1's claims (the killed process) once their lease expired."""
    job_holder: dict[int, str] = {}
    for event in events:
        details = event.details or {}
        if event.kind == "job_taken_over":
            assert job_holder.get(details["job_id"]) == details["from_node"] == "proc-1"
            assert event.at.timestamp() >= _as_ts(details["lease_expired_at"])
            job_holder.pop(details["job_id"])
        elif event.kind == "job_started":
            assert details["job_id"] not in job_holder, f"job {details['job_id']} claimed twice: {event.message}"
            job_holder[details["job_id"]] = details["node"]
        elif event.kind in ("job_succeeded", "job_skipped", "job_retry", "job_failed"):
            assert job_holder.pop(details["job_id"]) == details["node"]
    assert set(job_holder.values()) <= {"proc-1"} or not job_holder

    item_holder: dict[int, tuple[str, str]] = {}  # item -> (node, lease expiry at the claim)
    by_node: dict[str, set[int]] = defaultdict(set)
    for event in events:
        details = event.details or {}
        if event.kind == "delivery_claimed":
            for item in details["items"]:
                held = item_holder.get(item)
                if held is not None:  # only the dead processor's claims are taken over, and only once expired
                    assert held[0] == "proc-1" and details["taken_over"].get(str(item)) == "proc-1"
                    assert event.at.timestamp() >= _as_ts(held[1])
                item_holder[item] = (details["node"], details["lease_expires_at"])
                by_node[details["node"]].add(item)
        elif event.kind == "delivery_attempt":
            node, _ = item_holder.pop(details["item"])
            assert node == details["node"] and "held_by" not in details
    assert not item_holder or {node for node, _ in item_holder.values()} == {"proc-1"}


def _as_ts(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()
