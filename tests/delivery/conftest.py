"""Fixtures for delivery tests: a scriptable Storage SCP standing in for the PACS, result files, a clock."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

from tests.dicom_factory import mr_dataset, write
from tests.node_process import free_port

RESULT_CLASSES = (SegmentationStorage, Comprehensive3DSRStorage, SecondaryCaptureImageStorage)


class FakeClock:
    def __init__(self) -> None:
        self.current = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)

    def now(self) -> dt.datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += dt.timedelta(seconds=seconds)


class FakePacs:
    """A pynetdicom Storage SCP on loopback answering scripted statuses (then success), counting every
    C-STORE it receives and every one it answered with success."""

    def __init__(self, port: int | None = None, *, statuses=(), delay: float = 0.0, ae_title: str = "PACS"):
        self.port = port or free_port()
        self.statuses = list(statuses)
        self.delay = delay
        self.received: Counter[str] = Counter()
        self.stored: Counter[str] = Counter()
        self._lock = threading.Lock()
        ae = AE(ae_title)
        ae.require_called_aet = True
        for sop_class in RESULT_CLASSES:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            self.received[uid] += 1
            status = self.statuses.pop(0) if self.statuses else 0x0000
        time.sleep(self.delay)
        if status == 0x0000:
            with self._lock:
                self.stored[uid] += 1
        return status

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def fake_pacs():
    started = []

    def factory(*args, **kwargs) -> FakePacs:
        pacs = FakePacs(*args, **kwargs)
        started.append(pacs)
        return pacs

    yield factory
    for pacs in started:
        pacs.stop()


def make_result_files(folder: Path, count: int = 3, *, study_uid: str = "1.2.3.4.5") -> list[Path]:
    """Small stand-ins for result objects (SEG, SR, SC classes in turn); the fake PACS does not decode."""
    paths = []
    for index in range(count):
        ds = mr_dataset(study_uid=study_uid, rows=8, columns=8, instance_number=index + 1)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = RESULT_CLASSES[index % len(RESULT_CLASSES)]
        paths.append(write(ds, folder / f"result-{index}.dcm"))
    return paths
