"""A SEG that highdicom refuses for its source images does not cost the radiologist the findings: the SR and
summary are still built and delivered, and the timeline says which series got no SEG and why."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select

from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import TimelineEntry
from ortho_node.labels import Plane
from tests.reports.study_factory import make_knee_study


@pytest.fixture(scope="module")
def split_frame_of_reference(tmp_path_factory):
    """The knee study with one coronal instance moved to another frame of reference."""
    knee = make_knee_study(tmp_path_factory.mktemp("split"))
    [coronal] = [s for s in knee.prediction.segmentations if s.plane is Plane.CORONAL]
    path = coronal.slices[2].path
    ds = dcmread(path)
    ds.FrameOfReferenceUID = generate_uid()
    ds.save_as(path)
    return knee, coronal.series_instance_uid


def test_refused_seg_leaves_the_other_objects_built(split_frame_of_reference, results_settings):
    from reports.results import build_results

    knee, coronal = split_frame_of_reference
    built = build_results(knee.prediction, results_settings)
    assert list(built.seg_not_built) == [coronal] and built.seg_not_built[coronal]
    segs = [ds for ds in built.datasets if ds.Modality == "SEG"]
    referenced = {ds.ReferencedSeriesSequence[0].SeriesInstanceUID for ds in segs}
    assert len(segs) == 2 and coronal not in referenced
    summary = [ds for ds in built.datasets if ds.SOPClassUID == SecondaryCaptureImageStorage]
    assert [ds.Modality for ds in built.datasets].count("SR") == 1 and summary


def test_timeline_names_the_series_without_seg(tmp_path, split_frame_of_reference):
    from ortho_node.audit.timeline import Timeline

    knee, coronal = split_frame_of_reference
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    migrations.upgrade(engine)
    sessions = make_session_factory(engine)
    Timeline(sessions).objects_built(knee.prediction, [], job_id=None,
                                     seg_not_built={coronal: "frames of reference differ"})
    with sessions() as session:
        [row] = session.scalars(select(TimelineEntry).where(TimelineEntry.step == "objects_built")).all()
    engine.dispose()
    assert f"no SEG for series {coronal}: frames of reference differ" in row.detail
    assert row.data["seg_not_built"] == {coronal: "frames of reference differ"}
