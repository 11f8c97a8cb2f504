"""Issue 24: the REST API's actions (POST) with bearer tokens from ``ortho-node api-token``: no token 401, a
viewer's token 403 (audited), an operator's token acts (audited with ``token:NAME``), a revoked token 401; tokens
stored only as digests; the OpenAPI document names the actions and validates. A seeded node of its own."""

from __future__ import annotations

import hashlib

import pytest
import requests
from openapi_spec_validator import validate
from sqlalchemy import select

from ortho_node.db.models import ApiToken, AuditEvent, Study
from tests.console.forms import login
from tests.console.seeded import PASSWORD, USER, seed


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    seeded = seed(tmp_path_factory.mktemp("tokens"))
    yield seeded
    seeded.stop()


def _cli(node, capsys, *argv: str) -> tuple[int, str, str]:
    from ortho_node.app.cli import main as cli

    code = cli.main([*argv, "--data-dir", str(node.node.settings.data_dir)])
    out, err = capsys.readouterr()
    return code, out, err


def _create(node, capsys, name: str, role: str) -> str:
    code, out, err = _cli(node, capsys, "api-token", "create", name, "--role", role)
    assert code == 0 and f"({name}, {role}); shown only now" in err
    return out.strip()


def _events(node, kind: str) -> list[AuditEvent]:
    with node.node.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


def _post(node, path: str, token: str | None = None, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{node.console_url}/api/v1{path}", headers=headers, timeout=30, **kwargs)


def test_tokens_act_by_role_and_stop_when_revoked(node, capsys):
    viewer, operator = _create(node, capsys, "dashboard", "viewer"), _create(node, capsys, "ris-bridge", "operator")
    keep = f"/studies/{node.study_uid}/keep"

    # reading: any valid token
    listing = requests.get(f"{node.console_url}/api/v1/studies", headers={"Authorization": f"Bearer {viewer}"},
                           timeout=10)
    assert listing.status_code == 200 and listing.json()["count"] == 1

    # acting: no token, the console's cookie, a made-up token -> 401
    assert _post(node, keep).status_code == 401
    console = requests.Session()
    login(console, node.console_url, USER, PASSWORD)
    refused = console.post(f"{node.console_url}/api/v1{keep}", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"].startswith("actions need an API token")
    assert _post(node, keep, "odn_made-up").status_code == 401

    # a viewer's token: 403, audited with the token's name
    answer = _post(node, keep, viewer, json={"reason": "research"})
    assert answer.status_code == 403 and answer.json() == {
        "error": "token:dashboard is a viewer: only an operator may keep"}
    [event] = _events(node, "operator_action_refused")
    assert event.details["user"] == "token:dashboard" and event.details["via"] == "api"

    # an operator's token acts
    answer = _post(node, keep, operator, json={"reason": "research"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"action": "keep", "target": node.study_uid,
                             "result": f"study {node.study_uid} marked to keep: research: never purged"}
    with node.node.session_factory() as session:
        assert session.scalar(select(Study.keep).where(Study.study_instance_uid == node.study_uid))
    [done] = _events(node, "operator_action")
    assert done.details["user"] == "token:ris-bridge" and done.details["action"] == "keep"

    # revoked: 401 from the next request on
    with node.node.session_factory() as session:
        token_id = session.scalar(select(ApiToken.id).where(ApiToken.name == "ris-bridge"))
    code, out, _ = _cli(node, capsys, "api-token", "revoke", str(token_id))
    assert code == 0 and out.strip() == f"API token {token_id} (ris-bridge) revoked"
    answer = _post(node, f"/studies/{node.study_uid}/unkeep", operator)
    assert answer.status_code == 401 and answer.json() == {"error": "unknown or revoked API token"}
    assert [e.kind for e in _events(node, "api_token_created") + _events(node, "api_token_revoked")] == [
        "api_token_created", "api_token_created", "api_token_revoked"]


def test_actions_answer_404_and_409_as_json(node, capsys):
    operator = _create(node, capsys, "script", "operator")
    assert _post(node, "/studies/1.2.3/reprocess", operator).status_code == 404
    assert _post(node, "/deliveries/999999/retry", operator).json() == {"error": "no delivery 999999"}
    assert _post(node, "/destinations/NOWHERE/pause", operator).status_code == 404
    with node.node.session_factory() as session:
        from ortho_node.db.models import DeliveryItem

        delivered = session.scalar(select(DeliveryItem.id).where(DeliveryItem.state == "delivered"))
    conflict = _post(node, f"/deliveries/{delivered}/retry", operator)
    assert conflict.status_code == 409 and "not failed" in conflict.json()["error"]
    assert _post(node, f"/studies/{node.study_uid}/keep", operator, data="not json").status_code == 400


def test_tokens_are_stored_as_digests_and_listed_without_them(node, capsys):
    token = _create(node, capsys, "lister", "viewer")
    assert token.startswith("odn_") and len(token) > 40
    code, out, _ = _cli(node, capsys, "api-token", "list")
    assert code == 0 and "lister" in out and token[:12] in out and token not in out
    with node.node.session_factory() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == "lister"))
    assert row.digest == hashlib.sha256(token.encode()).hexdigest()
    files = list(node.node.settings.data_dir.glob("ortho-node.db*"))  # the database, its WAL and shared memory
    assert files and not any(token.encode() in path.read_bytes() for path in files)


def test_openapi_document_names_the_actions_and_validates(node):
    spec = requests.get(f"{node.console_url}/api/v1/openapi.json", timeout=10).json()
    validate(spec)
    actions = {path for path, item in spec["paths"].items() if "post" in item and not path.startswith("/dicomweb/")}
    assert {"/dicomweb/studies", "/dicomweb/studies/{StudyInstanceUID}"} <= set(spec["paths"])  # STOW-RS, issue 24
    assert actions == {f"/studies/{{uid}}/{a}" for a in ("reprocess", "resend", "keep", "unkeep", "not-for-analysis",
                                                         "analyse")} | {"/deliveries/{id}/retry",
                                                                        "/destinations/{name}/pause",
                                                                        "/destinations/{name}/resume"}
    resend = spec["paths"]["/studies/{uid}/resend"]["post"]
    assert resend["security"] == [{"token": []}] and {"200", "401", "403", "404", "409"} <= set(resend["responses"])
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
