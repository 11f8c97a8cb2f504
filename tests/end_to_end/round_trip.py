"""A PACS round trip on loopback: Orthanc, the PACS, pushes studies to a real ``ortho-node serve`` (a
subprocess running the bundled model on the CPU), which sends its SEG, SR and summary back to Orthanc.

Shared by ``tests/end_to_end`` and ``bench/e2e.py``. The node's own database (SQLite in its data folder) is
read through the admin queries, exactly what ``ortho-node audit`` shows.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import requests
from pydicom import Dataset, dcmread
from sqlalchemy import select

from ortho_node.audit.views import study_results, study_timeline
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import DeliveryItem, Job, Study
from tests.node_process import NodeProcess, free_port
from tests.reports.orthanc import Orthanc

NODE_AE = "ORTHODIFF"
MODALITY = "ORTHONODE"  # the node's name in Orthanc's DicomModalities, as in deploy/compose.yaml

#: Short completeness timers so a test study is ready within seconds; the long timeout still has to pass
#: for a study with missing planes (the GE series is sagittal only).
FAST_NODE = {
    "ORTHO_NODE_SCHEDULING_QUIET_PERIOD": "1.0",
    "ORTHO_NODE_SCHEDULING_SETTLE_TIME": "0.5",
    "ORTHO_NODE_SCHEDULING_LONG_TIMEOUT": "4.0",
    "ORTHO_NODE_SCHEDULING_POLL_INTERVAL": "1.0",
    "ORTHO_NODE_STORAGE_FSYNC": "false",  # throwaway data
    "ORTHO_NODE_DELIVERY_POLL_INTERVAL": "1.0",
    "ORTHO_NODE_MODEL_DEVICE": "cpu",
}


class RoundTripError(AssertionError):
    """A study did not make the round trip; the message says where it stopped."""


class RoundTrip:
    """Orthanc (knows the node as modality ``ORTHONODE``) and the node (delivers to Orthanc), both started;
    ``stop`` ends both."""

    def __init__(self, folder: Path, *, node_env: Mapping[str, str] | None = None) -> None:
        node_port = free_port()
        self.orthanc = Orthanc(folder / "orthanc", modalities={MODALITY: (NODE_AE, "127.0.0.1", node_port)})
        env = {**FAST_NODE,
               "ORTHO_NODE_DESTINATIONS": f"PACS={Orthanc.AE_TITLE}@127.0.0.1:{self.orthanc.dicom_port}",
               # Only the PACS sends, as in a department; PROBE is NodeProcess's readiness C-ECHO.
               "ORTHO_NODE_DICOM_ALLOWED_CALLING_AETS": f"{Orthanc.AE_TITLE}@127.0.0.1,PROBE@127.0.0.1",
               "ORTHO_NODE_DICOM_WORKERS": "0",  # the shipped default: two receiving processes on two cores
               **(node_env or {})}
        try:
            self.node = NodeProcess(folder / "node", port=node_port, extra_env=env)
        except BaseException:
            self.orthanc.stop()
            raise
        self.engine = make_engine(f"sqlite:///{self.node.data_dir / 'ortho-node.db'}")
        self.sessions = make_session_factory(self.engine)

    def stop(self) -> None:
        self.engine.dispose()
        self.node.stop()
        self.orthanc.stop()

    # -- the PACS side -------------------------------------------------------------------------------------

    def upload(self, payloads: Iterable[bytes]) -> str:
        """Store DICOM files in Orthanc (REST); returns the Orthanc ID of their (one) study."""
        studies = {self.orthanc.upload(payload) for payload in payloads}
        if len(studies) != 1:
            raise ValueError(f"expected the files of one study, got {len(studies)} studies")
        return studies.pop()

    def push(self, orthanc_study_id: str) -> None:
        """Orthanc sends the study to the node (``POST /modalities/ORTHONODE/store``, one association)."""
        self.orthanc.push(MODALITY, [orthanc_study_id])

    def pacs_objects(self, study_uid: str) -> dict[str, Dataset]:
        """Every instance Orthanc holds in the study, by SOP Instance UID, read back as DICOM files."""
        study_id = self.orthanc.study_id(study_uid)
        if study_id is None:
            return {}
        found = {}
        for instance in self.orthanc.get(f"/studies/{study_id}/instances"):
            response = requests.get(f"{self.orthanc.url}/instances/{instance['ID']}/file", timeout=30)
            response.raise_for_status()
            ds = dcmread(io.BytesIO(response.content))
            found[str(ds.SOPInstanceUID)] = ds
        return found

    def pacs_sop_uids(self, study_uid: str) -> set[str]:
        study_id = self.orthanc.study_id(study_uid)
        if study_id is None:
            return set()
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in self.orthanc.get(f"/studies/{study_id}/instances")}

    # -- the node side -------------------------------------------------------------------------------------

    def timeline(self, study_uid: str) -> list[dict[str, Any]]:
        return study_timeline(self.sessions, study_uid) or []

    def results(self, study_uid: str) -> list[dict[str, Any]]:
        return study_results(self.sessions, study_uid)

    def deliveries(self, study_uid: str) -> list[DeliveryItem]:
        with self.sessions() as session:
            return list(session.scalars(select(DeliveryItem).where(DeliveryItem.study_instance_uid == study_uid)))

    def job_states(self, study_uid: str) -> list[str]:
        with self.sessions() as session:
            return list(session.scalars(select(Job.state).join(Study).where(Study.study_instance_uid == study_uid)
                                        .order_by(Job.id)))

    def wait_until_delivered(self, study_uid: str, *, timeout: float = 180.0) -> dict[str, Any]:
        """Wait for the study's result set to be built, acknowledged by Orthanc for every object and held by
        Orthanc in the study; returns the result set. Raises :class:`RoundTripError` on a failed step."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._raise_on_failure(study_uid)
            results = self.results(study_uid)
            items = self.deliveries(study_uid)
            if results and items and all(item.state == "delivered" for item in items) \
                    and "succeeded" in self.job_states(study_uid):
                wanted = {obj["sop_instance_uid"] for obj in results[0]["objects"]}
                if wanted <= self.pacs_sop_uids(study_uid):
                    return results[0]
            time.sleep(0.5)
        steps = [f"{e['step']}: {e['detail']}" for e in self.timeline(study_uid)]
        raise RoundTripError(f"study {study_uid} not delivered within {timeout:.0f} s; timeline: {steps}; "
                             f"node log: {self.node.log()[-3000:]}")

    def _raise_on_failure(self, study_uid: str) -> None:
        for entry in self.timeline(study_uid):
            if entry["step"] in ("job_retry", "job_failed", "skipped", "job_skipped", "delivery_failed"):
                raise RoundTripError(f"study {study_uid}: {entry['step']}: {entry['detail']}; node log: "
                                     f"{self.node.log()[-3000:]}")


def dataset_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
