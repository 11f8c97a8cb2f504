"""Issue 24, deliverable 4 with real senders: Orthanc's DICOMweb plugin (``/dicom-web/servers/NODE/stow``, bearer
token and HTTP basic) and ``dicomweb-client`` send to the node's STOW-RS endpoint; what they sent is stored once,
and a malformed instance in a client's request gets its own FailedSOPSequence entry."""

from __future__ import annotations

import pytest
import requests
from pydicom.uid import generate_uid
from sqlalchemy import select

from ortho_node.db.models import AuditEvent, Instance
from ortho_node.dicom_status import Status
from tests.dicom_factory import mr_dataset
from tests.dicomweb.conftest import ROUTER
from tests.dicomweb.stow_client import part10
from tests.reports.orthanc import ORTHANC, Orthanc, dicomweb_plugin

pytestmark = pytest.mark.skipif(not ORTHANC.exists() or dicomweb_plugin() is None,
                                reason="Orthanc with its DICOMweb plugin is not installed")


def _study(count: int, seed: int = 0):
    study, series = generate_uid(), generate_uid()
    return [mr_dataset(study_uid=study, series_uid=series, seed=seed + i, instance_number=i + 1)
            for i in range(count)]


def _stored(node, datasets) -> set[str]:
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    with node.session_factory() as session:
        return set(session.scalars(select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(uids))))


def _requests(node) -> list[AuditEvent]:
    with node.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == "stow_request")
                                    .order_by(AuditEvent.id)))


def test_orthanc_sends_a_study_by_stow_rs_with_a_token_and_with_basic(stow, tmp_path):
    servers = {"TOKEN": {"Url": stow.url + "/", "HttpHeaders": {"Authorization": f"Bearer {stow.tokens['stow']}"}},
               "BASIC": {"Url": stow.url + "/", "Username": ROUTER[0], "Password": ROUTER[1]},
               "WRONG": {"Url": stow.url + "/", "Username": ROUTER[0], "Password": "not the password"}}
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, dicomweb_servers=servers)
    try:
        first, second = _study(4), _study(2, seed=10)
        ids = [orthanc.upload(part10(ds)) for ds in first][0], [orthanc.upload(part10(ds)) for ds in second][0]
        for server, study_id in zip(("TOKEN", "BASIC"), ids):
            sent = requests.post(f"{orthanc.url}/dicom-web/servers/{server}/stow", timeout=60,
                                 json={"Resources": [study_id], "Synchronous": True})
            assert sent.ok, sent.text
        refused = requests.post(f"{orthanc.url}/dicom-web/servers/WRONG/stow", timeout=60,
                                json={"Resources": [ids[0]], "Synchronous": True})
        assert not refused.ok
    finally:
        orthanc.remove()
    assert _stored(stow.node, first) == {str(ds.SOPInstanceUID) for ds in first}
    assert _stored(stow.node, second) == {str(ds.SOPInstanceUID) for ds in second}
    made = [(e.details["user"], e.details["statuses"]) for e in _requests(stow.node)]
    assert ("token:t-stow", {"0x0000": 4}) in made and ("router", {"0x0000": 2}) in made


def test_dicomweb_client_stores_and_reads_a_failed_instance_from_the_response(stow):
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    client = DICOMwebClient(url=stow.url, headers=stow.bearer("stow"))
    datasets = _study(3, seed=20)
    answer = client.store_instances(datasets=datasets)
    assert [str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence] == \
        [str(ds.SOPInstanceUID) for ds in datasets]
    assert _stored(stow.node, datasets) == {str(ds.SOPInstanceUID) for ds in datasets}

    bad = _study(1, seed=30)[0]
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = "1.2.3.abc"  # not a UID: 0xC221, as C-STORE
    good = _study(1, seed=31)[0]
    basic = DICOMwebClient(url=stow.url, session=create_session_from_user_pass(*ROUTER))
    answer = basic.store_instances(datasets=[good, bad])  # 202: dicomweb-client hands the response back
    (failed,) = answer.FailedSOPSequence
    assert failed.FailureReason == Status.CANNOT_UNDERSTAND_INVALID_UID
    assert [str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence] == [str(good.SOPInstanceUID)]
