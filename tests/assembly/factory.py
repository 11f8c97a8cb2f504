"""Synthetic MR studies built with pydicom for assembly and scheduling tests, and a node on a manual clock.

Every slice's pixels are the constant ``base + k`` (k = its index along the slice normal), so a test can
read the slice order straight from an assembled volume.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (EnhancedMRImageStorage, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEG2000Lossless, MRImageStorage, generate_uid)
from pynetdicom import AE
from sqlalchemy import select

from ortho_node.db.models import AuditEvent, Job, StudyAssembly
from tests.dicom_factory import mr_dataset

ORIENTATIONS = {
    "sagittal": [0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
    "coronal": [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
    "axial": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
}
DESCRIPTIONS = {"sagittal": "SAG PD FS", "coronal": "COR PD FS", "axial": "AX T2 FS"}
SIZE = 32


def normal(iop: Sequence[float]) -> np.ndarray:
    return np.cross(iop[:3], iop[3:])


def series(study_uid: str, plane: str, *, number: int, slices: int = 8, spacing: float = 3.0,
           iop: Sequence[float] | None = None, description: str | None = None, base: int | None = None,
           **attributes) -> list[Dataset]:
    """One single-frame series along ``plane``; ``attributes`` override header values (e.g. Laterality)."""
    iop = list(iop or ORIENTATIONS[plane])
    series_uid = generate_uid()
    base = 100 * number if base is None else base
    datasets = []
    for k in range(slices):
        ds = mr_dataset(study_uid=study_uid, series_uid=series_uid, rows=SIZE, columns=SIZE, instance_number=k + 1)
        ds.SeriesNumber = number
        ds.SeriesDescription = description or DESCRIPTIONS[plane]
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [float(v) for v in normal(iop) * (k - slices / 2) * spacing + np.array([-5.0, 3.0, 7.0])]
        ds.SpacingBetweenSlices = spacing
        ds.AcquisitionNumber = 1
        ds.ImagesInAcquisition = slices
        ds.PixelData = np.full((SIZE, SIZE), base + k, dtype=np.uint16).tobytes()
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        datasets.append(ds)
    return datasets


def enhanced_series(study_uid: str, plane: str, *, number: int, frames: int = 8, spacing: float = 3.0,
                    order: Iterable[int] | None = None) -> Dataset:
    """One Enhanced MR multi-frame object; frames stored in ``order`` of their positions."""
    iop = ORIENTATIONS[plane]
    order = list(order if order is not None else range(frames))
    ds = mr_dataset(study_uid=study_uid, rows=SIZE, columns=SIZE)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness",
                    "EchoTime", "RepetitionTime", "ScanningSequence", "SequenceVariant", "ScanOptions"):
        delattr(ds, keyword)
    ds.SeriesNumber = number
    ds.SeriesDescription = "SAG PD FS 3D"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = frames
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([_item(PixelSpacing=[0.5, 0.5], SliceThickness=spacing)])
    shared.PlaneOrientationSequence = DicomSequence([_item(ImageOrientationPatient=iop)])
    shared.MRTimingAndRelatedParametersSequence = DicomSequence([_item(RepetitionTime=3000.0)])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in order:
        position = [float(v) for v in normal(iop) * k * spacing]
        frame = Dataset()
        frame.PlanePositionSequence = DicomSequence([_item(ImagePositionPatient=position)])
        frame.MREchoSequence = DicomSequence([_item(EffectiveEchoTime=30.0)])
        frame.FrameContentSequence = DicomSequence([_item(InStackPositionNumber=k + 1, StackID="1")])
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = np.stack([np.full((SIZE, SIZE), 100 * number + k, np.uint16) for k in order]).tobytes()
    return ds


def _item(**values) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def study(planes: Sequence[str] = ("sagittal", "coronal", "axial"), **attributes) -> tuple[str, list[list[Dataset]]]:
    study_uid = generate_uid()
    return study_uid, [series(study_uid, plane, number=i + 1, **attributes) for i, plane in enumerate(planes)]


class EndedAssociations:
    """An intake listener registered after the scheduler's: once it has seen an end, the watcher has too."""

    def __init__(self) -> None:
        self._ended = threading.Semaphore(0)

    def instance_stored(self, instance) -> None:
        pass

    def association_ended(self, association_id, state) -> None:
        self._ended.release()

    def wait(self) -> None:
        assert self._ended.acquire(timeout=10), "association end not reported"


def send(node, datasets: Iterable[Dataset]) -> None:
    """C-STORE ``datasets`` over one association (then released) and wait until intake saw the release."""
    store(node.scp.port, datasets)
    node.ended.wait()


def store(port: int, datasets: Iterable[Dataset]) -> None:
    """C-STORE ``datasets`` to the node on ``port`` over one association, then release it."""
    ae = AE(ae_title="MR1")
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEG2000Lossless]
    for sop_class in (MRImageStorage, EnhancedMRImageStorage):
        for syntax in syntaxes:  # one context each: the SCP accepts one transfer syntax per context
            ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHODIFF")
    assert assoc.is_established
    for ds in datasets:
        status = assoc.send_c_store(ds)
        assert status.Status == 0, f"C-STORE status 0x{status.Status:04X}"
    assoc.release()


def advance(node, seconds: float) -> None:
    """Move the node's manual clock and let the jobs it queued finish."""
    node.scheduler.time.advance(seconds)
    assert node.scheduler.pool.wait_idle(60), "jobs still running"


def jobs(node) -> list[Job]:
    with node.session_factory() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def assemblies(node) -> list[StudyAssembly]:
    with node.session_factory() as session:
        return list(session.scalars(select(StudyAssembly).order_by(StudyAssembly.id)))


def audit_kinds(node) -> list[str]:
    with node.session_factory() as session:
        return list(session.scalars(select(AuditEvent.kind).order_by(AuditEvent.id)))


@pytest.fixture
def manual_node(make_settings):
    """Start nodes on a manual clock (``node.scheduler.time.advance``); stopped at teardown."""
    from ortho_node.app.node import Node
    from ortho_node.scheduling.pipeline import Pipeline
    from ortho_node.scheduling.timers import ManualTime

    nodes = []

    def factory(*, pipeline_factory=Pipeline, store=None, **overrides):
        settings = make_settings(**{"storage.fsync": False, **overrides})
        node = Node(settings, pipeline_factory=pipeline_factory, time=ManualTime(), store=store)
        node.ended = EndedAssociations()
        node.intake.add_listener(node.ended)
        node.prepare()
        node.start()
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.stop()
