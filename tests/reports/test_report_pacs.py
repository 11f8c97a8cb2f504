"""Result objects in a real PACS (Orthanc, fed by the delivery worker) and a real viewer (OHIF v3)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from ortho_node.config import load_settings
from ortho_node.db import migrations
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import DeliveryItem
from ortho_node.delivery.scu import RemoteNode, send_files
from ortho_node.delivery.worker import DeliveryService
from tests.conftest import ARTIFACTS
from tests.node_process import free_port
from tests.reports.ohif import CHROMIUM, Chromium, OhifServer, ohif_dist
from tests.reports.orthanc import ORTHANC, Orthanc
from tests.reports.study_factory import make_knee_study

SEG_CLASS, SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", \
    "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    """Larger images than elsewhere, so the viewer screenshots are legible."""
    return make_knee_study(tmp_path_factory.mktemp("knee"), rows=128, columns=128, slices=8)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, knee, result_files):
    """Orthanc holding the source series (sent by our SCU) and the results (sent by the delivery worker)."""
    if not ORTHANC.exists():
        pytest.fail("Orthanc missing: install the Debian packages orthanc and orthanc-dicomweb")
    folder = tmp_path_factory.mktemp("pacs")
    orthanc = Orthanc(folder / "orthanc", dicomweb=True)
    try:
        remote = RemoteNode(Orthanc.AE_TITLE, "127.0.0.1", orthanc.dicom_port)
        sources = [path for paths in knee.paths.values() for path in paths]
        assert all(r.ok for r in send_files(remote, sources, calling_ae="ORTHODIFF"))
        settings = load_settings(environ={}, overrides={
            "storage.data_dir": str(folder / "node"), "destinations": [f"PACS={remote}"]})
        engine = make_engine(settings.database_url)
        migrations.upgrade(engine)
        sessions = make_session_factory(engine)
        service = DeliveryService(settings, sessions)
        service.enqueue_files(result_files)
        service.worker.run_once()
        with sessions() as session:
            states = set(session.scalars(select(DeliveryItem.state)))
        engine.dispose()
        assert states == {"delivered"}
        yield orthanc
    finally:
        orthanc.stop()


def test_orthanc_holds_seg_sr_and_summary_in_the_study(pacs, knee):
    instances = pacs.instances_of_study(knee.prediction.study_instance_uid)
    classes = [i["SOPClassUID"] for i in instances]
    assert classes.count(SEG_CLASS) == 3 and classes.count(SR_CLASS) == 1 and classes.count(SC_CLASS) == 4
    analysed = {seg.series_instance_uid for seg in knee.prediction.segmentations}
    for seg in (i for i in instances if i["SOPClassUID"] == SEG_CLASS):
        referenced = seg["ReferencedSeriesSequence"]
        assert len(referenced) == 1 and referenced[0]["SeriesInstanceUID"] in analysed


@pytest.fixture(scope="module")
def viewer(pacs):
    """OHIF over Orthanc's DICOMweb and headless Chromium; skipped where they are not installed, except in CI."""
    missing = [name for name, ok in (("chromium", CHROMIUM.exists()), ("OHIF dist (ORTHO_TEST_OHIF_DIST)",
                                                                       ohif_dist() is not None)) if not ok]
    try:
        import websocket  # noqa: F401
    except ImportError:
        missing.append("websocket-client")
    if missing:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"viewer test needs {', '.join(missing)}")
    server = OhifServer(ohif_dist(), pacs.url)
    browser = Chromium(free_port())
    yield server, browser
    browser.close()
    server.stop()


def _open(viewer, study_uid: str, series_uid: str) -> Chromium:
    server, browser = viewer
    browser.navigate(f"{server.url}/viewer?StudyInstanceUIDs={study_uid}&initialSeriesInstanceUID={series_uid}")
    assert browser.wait_for("!!document.querySelector('[data-cy=viewport-pane] canvas')", timeout=60)
    # The first-visit tour dims the page; dismiss it like a user would.
    browser.wait_for("[...document.querySelectorAll('button')].some(b => b.innerText === 'Skip all')", timeout=10)
    browser.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText === 'Skip all')?.click()")
    return browser


def _series(result_objects, modality: str, plane: str = "") -> str:
    return next(ds.SeriesInstanceUID for ds in result_objects
                if ds.Modality == modality and plane in ds.SeriesDescription)


def test_ohif_draws_the_seg_as_a_coloured_overlay(viewer, knee, result_objects):
    browser = _open(viewer, knee.prediction.study_instance_uid, _series(result_objects, "SEG", "sagittal"))
    rect = browser.wait_for("(() => { const r = document.querySelector('[data-cy=viewport-pane]')"
                            ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()")
    coloured = 0.0
    for _ in range(30):  # the overlay appears once the SEG is fetched, decoded and hydrated
        shot = browser.screenshot(ARTIFACTS / "reports" / "ohif-seg.png")
        x, y, w, h = (int(v) for v in rect)
        pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)[y + 40:y + h - 40, x + 10:x + w - 10]
        chroma = pixels.max(axis=2) - pixels.min(axis=2)
        coloured = float((chroma > 40).mean())  # the source images are grey; segment colours are not
        if coloured > 0.05:
            break
        browser.wait_for("false", timeout=1)
    assert coloured > 0.05, f"only {coloured:.1%} of the viewport is coloured"


def test_ohif_opens_the_sr_with_its_findings_listed(viewer, knee, result_objects):
    from reports import codes

    browser = _open(viewer, knee.prediction.study_instance_uid, _series(result_objects, "SR"))
    browser.evaluate("document.querySelector('[data-cy=trackedMeasurements-btn]')?.click()")
    names = [codes.finding(f.label).code.meaning for f in knee.prediction.findings]
    expected = sum(len(np.unique(seg.mask)) - 1 for seg in knee.prediction.segmentations) + len(names)
    listed = browser.wait_for(
        f"document.body.innerText.includes('Measurements ({expected})') && "
        f"{json.dumps(names)}.every(name => document.body.innerText.includes(name))", timeout=60)
    browser.screenshot(ARTIFACTS / "reports" / "ohif-sr.png")
    assert listed, browser.evaluate("document.body.innerText")[-1500:]
