"""Issue 24, deliverable 4: STOW-RS into the node (PS3.18 10.5) through the same intake as C-STORE: durable before
the answer, per-instance statuses in the Store Instances Response, refusals by HTTP status, all audited. Real
HTTP on loopback against an in-process node; no mocks."""

from __future__ import annotations

import base64

import httpx
from openapi_spec_validator import validate
from pydicom.uid import generate_uid
from sqlalchemy import select

from listeners.dicomweb.stow import BATCH_INSTANCES
from ortho_node.db.models import AuditEvent, Instance
from ortho_node.dicom_status import Status
from tests.dicom_factory import UNTERMINATED_SEQUENCE, mr_dataset
from tests.dicomweb.conftest import OPERATOR, ROUTER, VIEWER, stow_node
from tests.dicomweb.stow_client import multipart, part10
from tests.intake.contention import instance_commits

REFERENCED, FAILED, FAILURE_REASON = "00081199", "00081198", "00081197"
SOP_CLASS, SOP_INSTANCE = "00081150", "00081155"


def _post(stow, payloads, headers, *, path="/studies", **kwargs) -> httpx.Response:
    body, content_type = multipart(payloads, **kwargs)
    return httpx.post(stow.url + path, content=body, headers={"Content-Type": content_type, **headers}, timeout=30)


def _basic(user: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()}


def _uids(response: httpx.Response, sequence: str) -> list[str | None]:
    items = response.json().get(sequence, {}).get("Value", [])
    return [item[SOP_INSTANCE].get("Value", [None])[0] for item in items]


def _events(node, kind: str) -> list[AuditEvent]:
    with node.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


def _stored(node, sop_uids) -> dict[str, Instance]:
    with node.session_factory() as session:
        rows = session.scalars(select(Instance).where(Instance.sop_instance_uid.in_(list(sop_uids))))
        return {row.sop_instance_uid: row for row in rows}


def test_instances_are_stored_durably_and_referenced(stow):
    datasets = [mr_dataset(seed=i, instance_number=i + 1) for i in range(3)]
    payloads = [part10(ds) for ds in datasets]
    response = _post(stow, payloads, stow.bearer("stow"))

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = response.json()
    assert FAILED not in body and body["00081190"] == {"vr": "UR"}
    sent = [str(ds.SOPInstanceUID) for ds in datasets]
    assert _uids(response, REFERENCED) == sent
    assert {item[SOP_CLASS]["Value"][0] for item in body[REFERENCED]["Value"]} == {str(datasets[0].SOPClassUID)}
    # durable when answered: rows committed, files as received (file meta included) under the data folder
    rows = _stored(stow.node, sent)
    assert set(rows) == set(sent)
    for payload, uid in zip(payloads, sent):
        assert stow.node.store.local_path(rows[uid].file_path).read_bytes() == payload
    assert not list(stow.node.store.tmp_dir.glob("stow-*")), "the spooled body is removed"
    (request,) = _events(stow.node, "stow_request")
    assert request.details["statuses"] == {"0x0000": 3} and request.details["user"] == "token:t-stow"
    assert request.calling_ae == "t-stow" and "3 stored, 0 duplicates, 0 failed" in request.message

    again = _post(stow, payloads[:1], stow.bearer("operator"))  # a re-sent instance: acknowledged, stored once
    assert again.status_code == 200 and _uids(again, REFERENCED) == sent[:1]
    assert "0 stored, 1 duplicates" in _events(stow.node, "stow_request")[-1].message


def test_a_malformed_instance_fails_alone_with_its_failure_reason(stow):
    good = mr_dataset(seed=1)
    cut = part10(mr_dataset(seed=2))
    cut_short = cut[:-2000]  # Pixel Data runs past the end: the same 0xC210 a C-STORE gets
    foreign_meta = part10(mr_dataset(seed=3))
    garbage = b"\0" * 128 + b"DICM" + UNTERMINATED_SEQUENCE
    response = _post(stow, [part10(good), cut_short, b"not dicom at all", garbage, foreign_meta],
                     _basic(OPERATOR))

    assert response.status_code == 202, response.text
    assert _uids(response, REFERENCED) == [str(good.SOPInstanceUID), _sop_of(foreign_meta)]
    failures = response.json()[FAILED]["Value"]
    reasons = [item[FAILURE_REASON]["Value"][0] for item in failures]
    assert reasons == [Status.CANNOT_UNDERSTAND_UNDECODABLE] * 3
    assert failures[0][SOP_INSTANCE]["Value"] == [_sop_of(cut)]  # named where its file meta could be read
    assert "Value" not in failures[1][SOP_INSTANCE]
    assert set(_stored(stow.node, [str(good.SOPInstanceUID), _sop_of(cut)])) == {str(good.SOPInstanceUID)}
    assert len(_events(stow.node, "instance_rejected")) == 3  # intake's own audit, as for C-STORE


def test_a_request_is_made_durable_in_batches_of_one_transaction_each(stow):
    study, series = generate_uid(), generate_uid()
    datasets = [mr_dataset(study_uid=study, series_uid=series, seed=i, instance_number=i + 1)
                for i in range(BATCH_INSTANCES + 6)]
    payloads = [part10(ds) for ds in datasets]
    with instance_commits(stow.node.engine) as commits:
        response = _post(stow, payloads, stow.bearer("stow"))

    assert response.status_code == 200, response.text
    sent = [str(ds.SOPInstanceUID) for ds in datasets]
    assert _uids(response, REFERENCED) == sent
    assert len(commits) == 2, f"{BATCH_INSTANCES} instances, then 6: one transaction each"
    rows = _stored(stow.node, sent)
    assert all(stow.node.store.read(rows[uid].file_path) == payload for uid, payload in zip(sent, payloads))
    assert "70 stored, 0 duplicates, 0 failed" in _events(stow.node, "stow_request")[-1].message


def test_refusals_and_duplicates_keep_their_places_in_the_response(stow):
    study = generate_uid()
    earlier, new1, new2 = (mr_dataset(study_uid=study, seed=20 + i) for i in range(3))
    other_study = mr_dataset(seed=23)
    assert _post(stow, [part10(earlier)], stow.bearer("stow")).status_code == 200
    parts = [part10(new1), part10(earlier), b"not dicom", part10(new1), part10(other_study), part10(new2)]
    response = _post(stow, parts, stow.bearer("stow"), path=f"/studies/{study}")

    assert response.status_code == 202, response.text
    assert _uids(response, REFERENCED) == [str(ds.SOPInstanceUID) for ds in (new1, earlier, new1, new2)]
    failures = response.json()[FAILED]["Value"]
    assert _uids(response, FAILED) == [None, str(other_study.SOPInstanceUID)]
    assert [item[FAILURE_REASON]["Value"][0] for item in failures] == [Status.CANNOT_UNDERSTAND_UNDECODABLE,
                                                                      Status.DATASET_DOES_NOT_MATCH_SOP_CLASS]
    assert set(_stored(stow.node, _uids(response, REFERENCED))) == {str(ds.SOPInstanceUID)
                                                                    for ds in (earlier, new1, new2)}
    assert "2 stored, 2 duplicates, 2 failed" in _events(stow.node, "stow_request")[-1].message


def _sop_of(payload: bytes) -> str:
    from io import BytesIO

    from pydicom import dcmread

    return str(dcmread(BytesIO(payload), stop_before_pixels=True).SOPInstanceUID)


def test_the_response_is_dicom_xml_when_the_client_prefers_it_and_406_when_it_accepts_neither(stow):
    from xml.etree import ElementTree

    stored, refused = mr_dataset(seed=11), mr_dataset(seed=12)
    accept = {"Accept": "application/dicom+json;q=0.5, application/dicom+xml"}
    response = _post(stow, [part10(stored), b"not dicom"], {**stow.bearer("stow"), **accept})
    assert response.status_code == 202 and response.headers["content-type"].startswith("application/dicom+xml")
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    root = ElementTree.fromstring(response.content)
    assert root.tag == "{http://dicom.nema.org/PS3.19/models/NativeDICOM}NativeDicomModel"
    referenced = root.find("d:DicomAttribute[@tag='00081199']", ns)
    assert referenced.get("keyword") == "ReferencedSOPSequence" and referenced.get("vr") == "SQ"
    [item] = referenced.findall("d:Item", ns)
    assert item.find("d:DicomAttribute[@tag='00081155']/d:Value", ns).text == str(stored.SOPInstanceUID)
    [failed] = root.findall("d:DicomAttribute[@tag='00081198']/d:Item", ns)
    reason = failed.find("d:DicomAttribute[@keyword='FailureReason']", ns)
    assert reason.get("vr") == "US" and int(reason.find("d:Value", ns).text) == Status.CANNOT_UNDERSTAND_UNDECODABLE
    assert _stored(stow.node, [str(stored.SOPInstanceUID)])

    html_only = _post(stow, [part10(refused)], {**stow.bearer("stow"), "Accept": "text/html"})
    assert html_only.status_code == 406 and "application/dicom+xml" in html_only.json()["error"]
    assert not _stored(stow.node, [str(refused.SOPInstanceUID)])  # refused before anything is stored
    assert _events(stow.node, "stow_refused")[-1].details["http_status"] == 406


def test_none_stored_is_409_and_the_study_of_the_target_resource_is_enforced(stow):
    study = mr_dataset(seed=5)
    other = mr_dataset(seed=6)
    response = _post(stow, [part10(other)], stow.bearer("stow"), path=f"/studies/{study.StudyInstanceUID}")
    assert response.status_code == 409
    (failure,) = response.json()[FAILED]["Value"]
    assert failure[FAILURE_REASON]["Value"] == [Status.DATASET_DOES_NOT_MATCH_SOP_CLASS]
    assert not _stored(stow.node, [str(other.SOPInstanceUID)])
    ok = _post(stow, [part10(study)], stow.bearer("stow"), path=f"/studies/{study.StudyInstanceUID}")
    assert ok.status_code == 200 and _uids(ok, REFERENCED) == [str(study.SOPInstanceUID)]


def test_refusals_by_credentials_and_role(stow):
    payload = [part10(mr_dataset(seed=7))]
    no_auth = _post(stow, payload, {})
    assert no_auth.status_code == 401 and "Basic" in no_auth.headers["www-authenticate"]
    assert _post(stow, payload, {"Authorization": "Bearer odn_made-up"}).status_code == 401
    assert _post(stow, payload, _basic((OPERATOR[0], "wrong password"))).status_code == 401
    assert _post(stow, payload, stow.bearer("viewer")).status_code == 403
    assert _post(stow, payload, _basic(VIEWER)).status_code == 403
    assert not _stored(stow.node, [str(mr_dataset(seed=7).SOPInstanceUID)])
    refused = _events(stow.node, "stow_refused")
    assert [e.details["http_status"] for e in refused] == [401, 401, 401, 403, 403]
    assert all("wrong password" not in str(e.details) for e in refused)
    # the stow role sends, and does nothing else
    assert _post(stow, payload, _basic(ROUTER)).status_code == 200
    console = stow.url.removesuffix("/dicomweb")
    api = httpx.get(f"{console}/api/v1/studies", headers=stow.bearer("stow"), timeout=10)
    assert api.status_code == 403


def test_refusals_by_media_type_structure_and_size(start_node):
    stow = stow_node(start_node, **{"dicomweb.max_request_mb": 1})
    payload = part10(mr_dataset(seed=8))
    headers = stow.bearer("stow")
    single = httpx.post(stow.url + "/studies", content=payload, timeout=10,
                        headers={"Content-Type": "application/dicom", **headers})
    assert single.status_code == 415
    body, content_type = multipart([payload])
    json_root = content_type.replace('type="application/dicom"', 'type="application/dicom+json"')
    assert httpx.post(stow.url + "/studies", content=body, timeout=10,
                      headers={"Content-Type": json_root, **headers}).status_code == 415
    cut = httpx.post(stow.url + "/studies", content=body[:-40], timeout=10,  # no closing boundary
                     headers={"Content-Type": content_type, **headers})
    assert cut.status_code == 400 and "closing boundary" in cut.json()["error"]
    no_boundary = httpx.post(stow.url + "/studies", content=body, timeout=10,
                             headers={"Content-Type": "multipart/related; type=\"application/dicom\"", **headers})
    assert no_boundary.status_code == 400
    big, big_type = multipart([payload] * 200)  # ~1.6 MiB over 1 MiB: refused by its Content-Length
    assert len(big) > 1024 * 1024
    too_large = httpx.post(stow.url + "/studies", content=big, timeout=30, headers={"Content-Type": big_type, **headers})
    assert too_large.status_code == 413

    def chunks():  # no Content-Length: refused once the spooled body passes the limit
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    streamed = httpx.post(stow.url + "/studies", content=chunks(), timeout=30,
                          headers={"Content-Type": big_type, **headers})
    assert streamed.status_code == 413
    assert not _stored(stow.node, [str(mr_dataset(seed=8).SOPInstanceUID)])
    assert not list(stow.node.store.tmp_dir.glob("stow-*"))
    assert [e.details["http_status"] for e in _events(stow.node, "stow_refused")] == [415, 415, 400, 400, 413, 413]


def test_own_listener_and_openapi_document(start_node):
    stow = stow_node(start_node, **{"dicomweb.own_listener": True, "dicomweb.port": 0})
    assert stow.node.dicomweb is not None and stow.node.dicomweb.port != stow.node.console.port
    ds = mr_dataset(seed=9)
    assert _post(stow, [part10(ds)], stow.bearer("stow")).status_code == 200
    console = f"http://127.0.0.1:{stow.node.console.port}"
    body, content_type = multipart([part10(ds)])
    on_console = httpx.post(f"{console}/dicomweb/studies", content=body, headers={"Content-Type": content_type},
                            timeout=10)
    assert on_console.status_code in (404, 405)
    spec = httpx.get(f"{console}/api/v1/openapi.json", timeout=10).json()
    validate(spec)
    assert spec["paths"]["/dicomweb/studies"]["post"]["operationId"] == "storeInstances"
    assert "basic" in spec["components"]["securitySchemes"]


def test_console_login_of_a_stow_account_is_refused(stow):
    import requests

    from tests.console.forms import login

    console = stow.url.removesuffix("/dicomweb")
    response = login(requests.Session(), console, *ROUTER, headers={"Origin": console})
    assert response.status_code == 403 and "STOW-RS" in response.text
    assert _events(stow.node, "console_login_failed")[-1].details["role"] == "stow"
