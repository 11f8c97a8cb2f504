"""Issue 24: operator actions from the console: roles (a viewer is refused with 403, audited), the session's CSRF
token on every action form, and each action's effect on the node with its audit event naming the user. A seeded
node of this module's own (one knee study delivered to PACS, flagged for ARCHIVE), as the actions change it."""

from __future__ import annotations

import time

import pytest
import requests
from sqlalchemy import func, select

from ortho_node.db.models import AuditEvent, Association, DeliveryItem, DestinationState, Job, Study, TimelineEntry
from tests.console.forms import csrf_token, login
from tests.console.seeded import OPERATOR, OPERATOR_PASSWORD, PASSWORD, USER, seed


@pytest.fixture(scope="module")
def acting(tmp_path_factory):
    node = seed(tmp_path_factory.mktemp("acting"), operator=True)
    yield node
    node.stop()


def _signed_in(acting, user: str, password: str) -> requests.Session:
    session = requests.Session()
    assert login(session, acting.console_url, user, password, allow_redirects=False).status_code == 303
    return session


@pytest.fixture(scope="module")
def operator(acting) -> requests.Session:
    return _signed_in(acting, OPERATOR, OPERATOR_PASSWORD)


@pytest.fixture(scope="module")
def viewer(acting) -> requests.Session:
    return _signed_in(acting, USER, PASSWORD)


def _act(acting, browser: requests.Session, action: str, target: str, *, page: str | None = None,
         **fields) -> requests.Response:
    """Submit an action form as the browser does: the CSRF token of the page that holds the form."""
    page = page or f"/studies/{acting.study_uid}"
    token = csrf_token(browser.get(acting.console_url + page, timeout=10).text)
    data = {"csrf_token": token, "action": action, "target": target, "next": page, **fields}
    return browser.post(f"{acting.console_url}/actions", data=data, allow_redirects=False, timeout=30)


def _events(acting, kind: str) -> list[AuditEvent]:
    with acting.node.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


def _study(acting) -> Study:
    with acting.node.session_factory() as session:
        return session.scalar(select(Study).where(Study.study_instance_uid == acting.study_uid))


def _wait(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _items(acting, destination: str) -> list[DeliveryItem]:
    with acting.node.session_factory() as session:
        return list(session.scalars(select(DeliveryItem).where(DeliveryItem.destination == destination)
                                    .order_by(DeliveryItem.id)))


def _done(response: requests.Response, acting, browser: requests.Session) -> str:
    """The 303 back to the form's page, and the notice that page shows."""
    assert response.status_code == 303, response.text
    page = browser.get(acting.console_url + response.headers["Location"], timeout=10)
    return page.text.split('<div class="notice" role="status">')[1].split("</div>")[0]


def test_a_viewer_sees_no_actions_and_is_refused_with_403_audited(acting, viewer):
    page = viewer.get(f"{acting.console_url}/studies/{acting.study_uid}", timeout=10).text
    assert 'action="/actions"' not in page and "admin (viewer)" in page
    resends = len(_events(acting, "delivery_resend"))
    refused = _act(acting, viewer, "resend", acting.study_uid)
    assert refused.status_code == 403 and "only an operator may resend" in refused.text
    [event] = _events(acting, "operator_action_refused")
    assert event.details == {"user": USER, "via": "console", "action": "resend", "target": acting.study_uid,
                             "role": "viewer"}
    assert event.study_instance_uid == acting.study_uid
    assert len(_events(acting, "delivery_resend")) == resends  # nothing was queued


def test_action_forms_need_the_sessions_csrf_token_and_this_origin(acting, operator, viewer):
    url = f"{acting.console_url}/actions"
    form = {"action": "keep", "target": acting.study_uid, "next": "/studies"}
    others = csrf_token(viewer.get(f"{acting.console_url}/studies", timeout=10).text)
    for token in (None, "0" * 64, others):  # none, made up, another session's
        data = {**form, **({"csrf_token": token} if token else {})}
        assert operator.post(url, data=data, allow_redirects=False, timeout=10).status_code == 403
    own = csrf_token(operator.get(f"{acting.console_url}/studies", timeout=10).text)
    assert operator.post(url, data={**form, "csrf_token": own}, headers={"Origin": "http://evil.example"},
                         allow_redirects=False, timeout=10).status_code == 403
    assert not _events(acting, "operator_action") and not _study(acting).keep


def test_keep_and_its_clearing_with_the_user_in_the_audit_trail(acting, operator):
    page = operator.get(f"{acting.console_url}/studies/{acting.study_uid}", timeout=10).text
    assert "oper (operator)" in page and 'data-action="keep"' in page
    notice = _done(_act(acting, operator, "keep", acting.study_uid, reason="teaching file"), acting, operator)
    assert "marked to keep: teaching file" in notice
    study = _study(acting)
    assert study.keep and study.keep_reason == "teaching file"
    [action] = _events(acting, "operator_action")
    assert action.details["user"] == OPERATOR and action.details["action"] == "keep"
    assert action.details["outcome"] == "done" and action.details["reason"] == "teaching file"
    assert len(_events(acting, "study_keep_set")) == 1

    _done(_act(acting, operator, "unkeep", acting.study_uid), acting, operator)
    assert not _study(acting).keep and len(_events(acting, "study_keep_cleared")) == 1
    assert [e.details["action"] for e in _events(acting, "operator_action")] == ["keep", "unkeep"]


def test_not_for_analysis_makes_a_requested_reprocess_end_skipped(acting, operator):
    notice = _done(_act(acting, operator, "not-for-analysis", acting.study_uid, reason="consent withdrawn"),
                   acting, operator)
    assert "marked not for analysis: consent withdrawn" in notice
    assert _study(acting).not_for_analysis
    with acting.node.session_factory() as session:
        jobs_before = session.scalar(select(func.count(Job.id)))
    notice = _done(_act(acting, operator, "reprocess", acting.study_uid), acting, operator)
    assert notice.startswith("job ") and "queued for study" in notice

    def skipped():
        with acting.node.session_factory() as session:
            job = session.scalars(select(Job).order_by(Job.id.desc())).first()
            return job if job.state == "skipped" else None

    job = _wait(skipped)
    assert job.id > jobs_before and job.last_error == "marked not for analysis: consent withdrawn"
    assert acting.predictor.calls == 1  # the seeded run only: the marked study was not analysed
    page = operator.get(f"{acting.console_url}/studies/{acting.study_uid}", timeout=10).text
    assert "skipped: marked not for analysis: consent withdrawn" in page and 'data-action="analyse"' in page

    _done(_act(acting, operator, "analyse", acting.study_uid), acting, operator)
    assert not _study(acting).not_for_analysis
    with acting.node.session_factory() as session:
        steps = set(session.scalars(select(TimelineEntry.step).where(
            TimelineEntry.study_instance_uid == acting.study_uid)))
    assert {"not_for_analysis_set", "not_for_analysis_cleared", "requested"} <= steps
    actions = [e.details["action"] for e in _events(acting, "operator_action")]
    assert actions[-3:] == ["not-for-analysis", "reprocess", "analyse"]


def test_retry_a_failed_delivery_and_refuse_one_that_is_not_failed(acting, operator):
    failed = _items(acting, "ARCHIVE")[0]
    assert failed.state == "failed" and failed.attempts == 1
    clicked = time.time()
    notice = _done(_act(acting, operator, "retry", str(failed.id), page="/deliveries?status=failed"), acting,
                   operator)
    assert notice.startswith(f"{failed.kind} to ARCHIVE queued again after:")

    def attempted_again():  # ARCHIVE still refuses our AE title: flagged again after one fresh attempt
        [item] = [i for i in _items(acting, "ARCHIVE") if i.id == failed.id]
        return item if item.state == "failed" and item.last_attempt_at.timestamp() >= clicked - 1 else None

    item = _wait(attempted_again)
    assert item.attempts == 1  # the retry started its attempts afresh
    [retry] = _events(acting, "delivery_retry")
    assert retry.details["by"] == OPERATOR and retry.details["delivery_id"] == failed.id
    assert retry.sop_instance_uid == failed.sop_instance_uid

    delivered = _items(acting, "PACS")[0]
    refused = _act(acting, operator, "retry", str(delivered.id), page="/deliveries")
    assert refused.status_code == 409 and "is delivered, not failed" in refused.text
    assert _act(acting, operator, "retry", "999999", page="/deliveries").status_code == 404
    outcomes = [e.details["outcome"] for e in _events(acting, "operator_action") if e.details["action"] == "retry"]
    assert outcomes == ["done", "failed", "failed"]


def test_pause_holds_a_resend_until_resume(acting, operator):
    notice = _done(_act(acting, operator, "pause", "PACS", page="/destinations", reason="PACS upgrade"), acting,
                   operator)
    assert notice == "deliveries to PACS paused: PACS upgrade"
    with acting.node.session_factory() as session:
        state = session.get(DestinationState, "PACS")
    assert state.paused and state.changed_by == OPERATOR and state.reason == "PACS upgrade"
    page = operator.get(f"{acting.console_url}/destinations", timeout=10).text
    assert "paused" in page and "by oper: PACS upgrade" in page and 'data-action="resume"' in page

    with acting.pacs.session_factory() as session:
        associations = session.scalar(select(func.count(Association.id)))
    notice = _done(_act(acting, operator, "resend", acting.study_uid, to="PACS"), acting, operator)
    assert notice == "8 result objects queued for PACS"
    assert acting.node.delivery.worker.run_once() == 0  # paused: not one attempt
    time.sleep(1.0)  # the worker's own passes leave it alone too
    assert {i.state for i in _items(acting, "PACS")} == {"pending"}

    _done(_act(acting, operator, "resume", "PACS", page="/destinations"), acting, operator)
    _wait(lambda: {i.state for i in _items(acting, "PACS")} == {"delivered"})
    with acting.pacs.session_factory() as session:
        assert session.scalar(select(func.count(Association.id))) > associations  # it reached the PACS again
    kinds = [e.kind for e in _events(acting, "destination_paused") + _events(acting, "destination_resumed")]
    assert kinds == ["destination_paused", "destination_resumed"]
    assert _act(acting, operator, "pause", "NOWHERE", page="/destinations").status_code == 404
