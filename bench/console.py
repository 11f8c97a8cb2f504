"""Console page time over a large archive (issue 24 goal: the first page of a 10,000-study list in < 300 ms).

Builds a migrated SQLite database (in a temporary folder, or ``--database URL``) directly: per study three series of
``--instances`` instance rows from one sender, a succeeded job with its assembly, a result set with eight findings,
three result objects delivered to PACS and flagged for ARCHIVE, and the timeline steps a processed study has (no
files: the pages read rows only). Then serves the node's console (and its API) on a free loopback port with a
signed-in viewer and times, ``--runs`` times each after one warm-up: the studies list's first page, its first
page filtered by a status (rows computed, read in batches), a search by patient ID, the next page, a study's
page, and the API's first page of 100. Prints the median and range (min-max) in milliseconds per page.

    python3 bench/console.py [--studies 10000] [--instances 20] [--runs 20] [--database URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert  # noqa: E402

from listeners.console.passwords import hash_password  # noqa: E402
from ortho_node.config import load_settings  # noqa: E402
from ortho_node.db import migrations  # noqa: E402
from ortho_node.db.engine import make_engine  # noqa: E402
from ortho_node.db.models import (DeliveryItem, Instance, Job, Series, Study, StudyAssembly,  # noqa: E402
                                  StudyResult, TimelineEntry)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
MR, SR, SEG = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.66.4"
LABELS = ("ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU")
USER, PASSWORD = "viewer", "bench password"
BATCH = 500  # studies per transaction while building


def _study_rows(number: int, instances: int) -> dict[str, list[dict]]:
    """Every row one processed study has, keyed by table; ids derived from ``number`` (1-based)."""
    uid = f"1.2.826.0.1.3680043.10.24.{number}"
    at = T0 + dt.timedelta(minutes=7 * number)
    done = at + dt.timedelta(seconds=40)
    rows: dict[str, list[dict]] = {name: [] for name in ("studies", "series", "instances", "jobs", "assemblies",
                                                          "results", "deliveries", "timeline")}
    rows["studies"].append(dict(id=number, study_instance_uid=uid, study_description="MR KNEE RIGHT",
                                accession_number=f"A{number:08d}", patient_id=f"P{number % 7919:06d}",
                                patient_name=f"BENCH^PATIENT{number % 7919}", study_date=at.date(),
                                first_received_at=at, last_received_at=at, keep=False, not_for_analysis=False))
    planes = {}
    for k, plane in enumerate(("sagittal", "coronal", "axial")):
        series_id = 3 * number + k
        series_uid = f"{uid}.{k + 1}"
        planes[plane] = {"series_instance_uid": series_uid, "reason": "PD fat-suppressed, thinnest slices",
                         "contrast": "pd_fs"}
        rows["series"].append(dict(id=series_id, study_id=number, series_instance_uid=series_uid, modality="MR",
                                   series_number=k + 1, series_description=f"PD FS {plane}", instance_count=instances,
                                   first_received_at=at, last_received_at=at))
        rows["instances"] += [dict(series_id=series_id, sop_instance_uid=f"{series_uid}.{n}", sop_class_uid=MR,
                                   transfer_syntax_uid="1.2.840.10008.1.2.1", file_path=f"i/{series_uid}.{n}",
                                   file_size=1, sha256="0" * 64, received_at=at, calling_ae="MR1",
                                   instance_number=n) for n in range(1, instances + 1)]
    rows["jobs"].append(dict(id=number, study_id=number, state="succeeded", reason="expected planes present",
                             last_instance_id=0, attempts=1, next_attempt_at=at, created_at=at, started_at=at,
                             finished_at=done))
    rows["assemblies"].append(dict(job_id=number, study_id=number, created_at=at, outcome="assembled", joint="knee",
                                   laterality="R", completeness_reason="expected planes present",
                                   summary={"planes": planes, "missing_planes": [], "excluded": []}))
    objects = [{"kind": kind, "sop_instance_uid": f"{uid}.9.{n}", "series_instance_uid": f"{uid}.9",
                "sop_class_uid": cls, "path": f"/nonexistent/{uid}.9.{n}.dcm"}
               for n, (kind, cls) in enumerate((("seg", SEG), ("sr", SR), ("summary", SR)), start=1)]
    rows["results"].append(dict(study_instance_uid=uid, job_id=number, created_at=done, joint="knee", laterality="R",
                                model_name="OrthoDiffusion-knee", model_version="0.1.0", model_card={},
                                findings=[{"label": label, "probability": 0.1 * i, "threshold": 0.5,
                                           "present": i % 3 == 0} for i, label in enumerate(LABELS)],
                                objects=objects))
    for destination, state in (("PACS", "delivered"), ("ARCHIVE", "failed")):
        rows["deliveries"] += [dict(destination=destination, study_instance_uid=uid,
                                    series_instance_uid=o["series_instance_uid"],
                                    sop_instance_uid=o["sop_instance_uid"], sop_class_uid=o["sop_class_uid"],
                                    kind=o["kind"], file_path=o["path"], state=state, attempts=1, queued_at=done,
                                    next_attempt_at=done, last_attempt_at=done,
                                    delivered_at=done if state == "delivered" else None,
                                    last_error=None if state == "delivered" else "0xA700 out of resources")
                               for o in objects]
    rows["timeline"] += [dict(study_instance_uid=uid, job_id=number, at=at + dt.timedelta(seconds=s), step=step,
                              detail=step.replace("_", " "))
                         for s, step in enumerate(("ready", "job_started", "assembled", "inference_started",
                                                   "inference_finished", "objects_built", "job_succeeded",
                                                   "delivery_queued", "delivered", "delivery_failed"))]
    return rows


TABLES = (("studies", Study), ("series", Series), ("instances", Instance), ("jobs", Job),
          ("assemblies", StudyAssembly), ("results", StudyResult), ("deliveries", DeliveryItem),
          ("timeline", TimelineEntry))


def build(database_url: str, studies: int, instances: int) -> None:
    engine = make_engine(database_url)
    migrations.upgrade(engine)
    started = time.monotonic()
    for first in range(1, studies + 1, BATCH):
        merged: dict[str, list[dict]] = {name: [] for name, _ in TABLES}
        for number in range(first, min(first + BATCH, studies + 1)):
            for name, rows in _study_rows(number, instances).items():
                merged[name] += rows
        with engine.begin() as connection:
            for name, model in TABLES:
                connection.execute(insert(model), merged[name])
    engine.dispose()
    print(f"built {studies} studies ({3 * instances} instance rows each) in {time.monotonic() - started:.0f} s",
          flush=True)


def serve(data_dir: Path, database_url: str):
    """The node's console and API over the database (no DICOM port, scheduler or model: pages only)."""
    from listeners.api.routes import Api, api_app
    from listeners.console.routes import Console, console_app
    from listeners.web.listener import WebListener
    from ortho_node.audit.trail import AuditTrail
    from ortho_node.db.engine import make_session_factory

    settings = load_settings(environ={}, overrides={
        "storage.data_dir": str(data_dir), "database.url": database_url, "console.enabled": True,
        "console.port": 0, "console.users": [f"{USER}:{hash_password(PASSWORD)}"],
        "destinations": ["PACS=PACS@127.0.0.1:11112", "ARCHIVE=ARCHIVE@127.0.0.1:11113"]})
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    console = Console(settings.console, sessions, AuditTrail(sessions), destinations=settings.destinations)
    app = console_app(console, api=api_app(Api(sessions, settings.destinations), console.session_actor,
                                           version="bench"))
    listener = WebListener(app, "127.0.0.1", 0, name="bench console")
    listener.start()
    return listener, engine


def _login(url: str) -> requests.Session:
    import re

    browser = requests.Session()
    page = browser.get(f"{url}/login", timeout=30).text
    token = re.search(r'name="csrf_token" value="([^"]*)"', page).group(1)
    response = browser.post(f"{url}/login", data={"user": USER, "password": PASSWORD, "csrf_token": token},
                            allow_redirects=False, timeout=30)
    assert response.status_code == 303, response.status_code
    return browser


def measure(browser: requests.Session, url: str, runs: int) -> None:
    newest = 1  # built in order: the highest number is the newest
    pages = {
        "studies, first page": "/studies",
        "studies, first page, status=delivery_failed": "/studies?status=delivery_failed",
        "studies, search by patient ID": "/studies?search=P000042",
        "studies, second page": "/studies?offset=100",
        "one study's page": f"/studies/1.2.826.0.1.3680043.10.24.{newest}",
        "API /studies?limit=100": "/api/v1/studies?limit=100",
    }
    for label, path in pages.items():
        times = []
        for run in range(runs + 1):
            started = time.perf_counter()
            response = browser.get(url + path, timeout=60)
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code == 200, (path, response.status_code)
            if run:  # the first is the warm-up
                times.append(elapsed)
        print(f"{label:48} median {statistics.median(times):7.1f} ms  range {min(times):.1f}-{max(times):.1f} ms "
              f"({runs} runs, {len(response.content) // 1024} KiB)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=20, help="instance rows per series (three series)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--database", help="SQLAlchemy URL of an empty database (default: SQLite, temporary)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-console-") as folder:
        data_dir = Path(folder)
        database_url = args.database or f"sqlite:///{data_dir / 'ortho-node.db'}"
        build(database_url, args.studies, args.instances)
        listener, engine = serve(data_dir, database_url)
        try:
            measure(_login(f"http://127.0.0.1:{listener.port}"), f"http://127.0.0.1:{listener.port}", args.runs)
        finally:
            listener.stop()
            engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
