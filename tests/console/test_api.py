"""Issue 24: the read-only REST API under /api/v1 on the console's port (the seeded node: one knee study
delivered to PACS and flagged for ARCHIVE), its OpenAPI document, and its sign-in."""

from __future__ import annotations

import datetime as dt

import pytest
import requests
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from tests.console.forms import login
from tests.console.seeded import PASSWORD, USER


@pytest.fixture(scope="module")
def api(seeded) -> requests.Session:
    session = requests.Session()
    assert login(session, seeded.console_url, USER, PASSWORD).status_code == 200
    return session


@pytest.fixture(scope="module")
def spec(seeded) -> dict:
    response = requests.get(f"{seeded.console_url}/api/v1/openapi.json", timeout=10)  # public: no data in it
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    return response.json()


def _get(seeded, api, path: str, **params) -> dict:
    response = api.get(f"{seeded.console_url}/api/v1{path}", params=params, timeout=10)
    assert response.status_code == 200, (path, response.text)
    return response.json()


def _check(spec: dict, schema: str, instance) -> None:
    """The instance matches its component schema in the served document."""
    OAS31Validator({"$ref": f"#/components/schemas/{schema}", "components": spec["components"]}).validate(instance)


def test_openapi_document_validates_and_names_every_route(seeded, api, spec):
    validate(spec)
    assert spec["openapi"] == "3.1.0" and spec["servers"] == [{"url": "/api/v1"}]
    reads = {path for path, item in spec["paths"].items() if "get" in item}
    assert reads == {"/studies", "/studies/{uid}", "/studies/{uid}/timeline", "/studies/{uid}/results",
                     "/studies/{uid}/findings", "/jobs", "/deliveries", "/destinations", "/nodes"}
    for path in reads:
        item = spec["paths"][path]
        answer = _get(seeded, api, path.replace("{uid}", seeded.study_uid))
        schema = item["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
        _check(spec, schema, answer)


def test_sign_in_is_required(seeded):
    url = f"{seeded.console_url}/api/v1/studies"
    for headers in ({}, {"Authorization": "Bearer made-up"}):
        response = requests.get(url, headers=headers, timeout=10)
        assert response.status_code == 401 and response.json() == {
            "error": "sign in to the console, or send an API token"}
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    stranger = requests.Session()
    stranger.cookies.set("ortho_console", "forged")
    assert stranger.get(url, timeout=10).status_code == 401


def test_studies_with_the_consoles_filters(seeded, api):
    [study] = _get(seeded, api, "/studies")["items"]
    assert study["study_instance_uid"] == seeded.study_uid and study["status"] == "delivery_failed"
    assert (study["joint"], study["laterality"], study["delivered"], study["failed"]) == ("knee", "R", 8, 8)
    assert study["findings_present"] == ["MCL", "LCL", "PD", "EFFU"] and study["calling_aes"] == ["MR1"]
    assert dt.datetime.fromisoformat(study["last_received_at"]).utcoffset() == dt.timedelta(0)
    for query, shown in (({"status": "delivery_failed"}, 1), ({"status": "delivered"}, 0), ({"joint": "knee"}, 1),
                         ({"joint": "ankle"}, 0), ({"ae": "MR1"}, 1), ({"ae": "CT9"}, 0), ({"until": "2000-01-01"}, 0),
                         ({"search": seeded.study_uid[-8:]}, 1), ({"search": "no such thing"}, 0)):
        assert _get(seeded, api, "/studies", **query)["count"] == shown, query
    bad = api.get(f"{seeded.console_url}/api/v1/studies", params={"since": "yesterday"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"].startswith("since: expected a date")


def test_one_study_its_timeline_results_and_findings(seeded, api):
    uid = seeded.study_uid
    assert _get(seeded, api, f"/studies/{uid}")["instance_count"] == 18
    steps = [e["step"] for e in _get(seeded, api, f"/studies/{uid}/timeline")["items"]]
    assert steps[:2] == ["first_received", "last_received"] and steps.count("delivered") == 8
    [result] = _get(seeded, api, f"/studies/{uid}/results")["items"]
    assert result["model_version"] == "0.1.0-test" and {o["kind"] for o in result["objects"]} >= {"sr", "summary"}
    assert all("path" not in o for o in result["objects"]) and "model_card" not in result  # no server paths
    findings = _get(seeded, api, f"/studies/{uid}/findings")
    assert findings["result_set_id"] == result["id"] and findings["joint"] == "knee"
    present = [f["label"] for f in findings["findings"] if f["present"]]
    assert present == ["MCL", "LCL", "PD", "EFFU"]
    for tail in ("", "/timeline", "/results", "/findings"):
        missing = api.get(f"{seeded.console_url}/api/v1/studies/1.2.3{tail}", timeout=10)
        assert missing.status_code == 404 and missing.json() == {"error": "no study 1.2.3"}


def test_jobs_deliveries_and_destinations(seeded, api):
    [job] = _get(seeded, api, "/jobs")["items"]
    assert job["study_instance_uid"] == seeded.study_uid and job["state"] == "succeeded"
    failed = _get(seeded, api, "/deliveries", status="failed")["items"]
    assert len(failed) == 8 and {d["destination"] for d in failed} == {"ARCHIVE"}
    assert _get(seeded, api, "/deliveries")["count"] == 16
    destinations = {d["name"]: d for d in _get(seeded, api, "/destinations")["items"]}
    assert set(destinations) == {"PACS", "ARCHIVE"}
    assert destinations["PACS"]["queue"]["delivered"] == 8 and destinations["PACS"]["ae_title"] == "PACS"
    assert destinations["ARCHIVE"]["queue"]["failed"] == 8 and destinations["ARCHIVE"]["queue"]["delivered"] == 0


def test_read_only_and_json_errors(seeded, api):
    response = api.post(f"{seeded.console_url}/api/v1/studies", timeout=10)
    assert response.status_code == 405 and response.json() == {"error": "read-only: GET only"}
    missing = api.get(f"{seeded.console_url}/api/v1/nothing", timeout=10)
    assert missing.status_code == 404 and missing.json() == {"error": "no such resource"}


def test_bearer_tokens_where_the_node_gives_a_token_check(seeded):
    from listeners.api.routes import Api, api_app
    from listeners.web.actions import Actor
    from listeners.web.listener import WebListener
    from ortho_node.config.users import Role

    node = seeded.node
    robot = Actor("robot", Role.VIEWER, "api")
    app = api_app(Api(node.session_factory, node.settings.destinations), lambda request: None, version="test",
                  tokens={"s3cret-token": robot}.get)
    listener = WebListener(app, "127.0.0.1", 0, name="api test")
    listener.start()
    try:
        url = f"http://127.0.0.1:{listener.port}"
        assert requests.get(f"{url}/studies", headers={"Authorization": "Bearer s3cret-token"},
                            timeout=10).json()["count"] == 1
        assert requests.get(f"{url}/studies", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        spec = requests.get(f"{url}/openapi.json", timeout=10).json()
        validate(spec)
        assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    finally:
        listener.stop()
