"""Issue 22, item 3: a study says what it waits for and until when; a study that cannot be analysed ends its
job ``skipped`` with the exact cause, in ``jobs``, ``studies``, ``audit`` and the console's study page."""

from __future__ import annotations

import datetime as dt
import json

from listeners.console import pages
from ortho_node.app.cli import main as cli
from ortho_node.audit import views
from tests.assembly.factory import advance, audit_kinds, jobs, send, series, study

ONE_IMAGE_CAUSE = "no usable plane: series 1: 1 slices, fewer than 5 (assembly.min_slices)"


def _clock(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%H:%M:%S UTC")


def _console_page(node, study_uid: str) -> str:
    """The console's study page as its server builds it, from the same views."""
    [row] = views.list_studies(node.session_factory, views.Filters(search=study_uid))
    return pages.study_page(row, views.study_timeline(node.session_factory, study_uid) or [], [], [], [],
                            user="admin")


def _cli_json(capsys, *argv: str):
    capsys.readouterr()
    assert cli.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def _cli_text(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out


def test_waiting_study_names_the_missing_planes_and_the_time(manual_node, capsys):
    node = manual_node()
    data = ["--data-dir", str(node.settings.data_dir)]
    study_uid, planes = study(("sagittal", "coronal"))
    sent_at = node.scheduler.time.now()  # the manual clock stands still while the study arrives
    send(node, [ds for group in planes for ds in group])
    [entry] = _cli_json(capsys, "studies", "--json", *data)
    assert entry["waiting"].startswith("receiving: last instance at ")  # not checked yet: settle time
    advance(node, 2)
    expected = (f"waiting: expected planes axial missing (sagittal, coronal present); ready at the long timeout "
                f"{_clock(sent_at + dt.timedelta(seconds=120))}")
    [entry] = _cli_json(capsys, "studies", "--json", *data)
    assert entry["waiting"] == expected and entry["job"] is None
    assert expected in _cli_text(capsys, "studies", *data)
    [row] = _cli_json(capsys, "audit", "studies", "--json", *data)
    assert (row["status"], row["waiting"]) == ("receiving", expected)
    timeline = _cli_json(capsys, "audit", "timeline", study_uid, "--json", *data)["timeline"]
    assert [e["detail"] for e in timeline if e["step"] == "waiting"] == [expected]
    assert "Waiting for" in _console_page(node, study_uid) and expected in _console_page(node, study_uid)
    advance(node, 118)
    [job] = jobs(node)
    assert job.state == "succeeded" and "axial missing" in job.reason
    [entry] = _cli_json(capsys, "studies", "--json", *data)
    assert entry["waiting"] is None  # every instance is the job's


def test_quiet_period_is_the_wait_when_the_expected_planes_are_present(manual_node, capsys):
    node = manual_node()
    _, planes = study()
    for group in planes:  # no ImagesInAcquisition: no sender signal, the quiet period decides
        for ds in group:
            del ds.ImagesInAcquisition
    sent_at = node.scheduler.time.now()
    send(node, [ds for group in planes for ds in group])
    advance(node, 2)
    [entry] = _cli_json(capsys, "studies", "--json", "--data-dir", str(node.settings.data_dir))
    assert entry["waiting"] == (f"waiting: expected planes sagittal, coronal, axial present; quiet period until "
                                f"{_clock(sent_at + dt.timedelta(seconds=10))}")


def test_one_image_study_is_skipped_with_its_exact_cause_everywhere(manual_node, database_url, capsys,
                                                                    monkeypatch):
    node = manual_node(**{"database.url": database_url})  # the state is plain text: no migration, both databases
    monkeypatch.setenv("ORTHO_NODE_DATABASE_URL", database_url)
    data = ["--data-dir", str(node.settings.data_dir)]
    study_uid = study(())[0]
    send(node, series(study_uid, "sagittal", number=1, slices=1))
    advance(node, 2)
    [entry] = _cli_json(capsys, "studies", "--json", *data)
    assert entry["waiting"].startswith("waiting: no usable plane yet (expected planes sagittal, coronal, axial "
                                       "missing); ready at the long timeout ")
    advance(node, 120)
    [job] = jobs(node)
    assert (job.state, job.attempts, job.last_error) == ("skipped", 1, ONE_IMAGE_CAUSE)
    kinds = audit_kinds(node)
    assert "job_skipped" in kinds and "job_succeeded" not in kinds and "job_failed" not in kinds

    [listed] = _cli_json(capsys, "jobs", "--json", *data)
    assert (listed["state"], listed["skip_cause"]) == ("skipped", ONE_IMAGE_CAUSE)
    assert f"skipped: {ONE_IMAGE_CAUSE}" in _cli_text(capsys, "jobs", *data)
    [entry] = _cli_json(capsys, "studies", "--json", *data)
    assert (entry["job"]["state"], entry["job"]["skip_cause"], entry["waiting"]) == ("skipped", ONE_IMAGE_CAUSE, None)
    assert f"skipped: {ONE_IMAGE_CAUSE}" in _cli_text(capsys, "studies", *data)
    [row] = _cli_json(capsys, "audit", "studies", "--json", *data)
    assert (row["status"], row["job_state"]) == ("skipped", "skipped")
    assert row["failure_reasons"] == [f"skipped: {ONE_IMAGE_CAUSE}"]
    failures = _cli_json(capsys, "audit", "failures", "--json", *data)
    assert [(f["step"], f["detail"]) for f in failures] == [("job_skipped", f"job {job.id} skipped: {ONE_IMAGE_CAUSE}")]
    timeline = _cli_json(capsys, "audit", "timeline", study_uid, "--json", *data)["timeline"]
    assert f"job {job.id} skipped: {ONE_IMAGE_CAUSE}" in [e["detail"] for e in timeline]
    assert ONE_IMAGE_CAUSE in _console_page(node, study_uid)
    assert views.daily_summary(node.session_factory, days=1)[0]["failures"] == 1


def test_unknown_joint_job_is_skipped_and_its_reason_claims_no_expected_planes(manual_node):
    node = manual_node(**{"assembly.unknown_joint": "skip"})
    _, planes = study(BodyPartExamined="EXTREMITY", SeriesDescription="PD FS")
    send(node, [ds for group in planes for ds in group])
    advance(node, 2)
    [job] = jobs(node)
    assert job.state == "skipped" and job.last_error.startswith("joint unknown (")
    assert "expected planes" not in job.reason
    assert job.reason.startswith("complete by sender signals") and "joint unknown" in job.reason


def test_a_later_job_supersedes_a_skipped_one(manual_node):
    node = manual_node()
    study_uid = study(())[0]
    send(node, series(study_uid, "sagittal", number=1, slices=1))
    advance(node, 122)
    assert [j.state for j in jobs(node)] == ["skipped"]
    send(node, [ds for plane, number in (("sagittal", 2), ("coronal", 3), ("axial", 4))
                for ds in series(study_uid, plane, number=number)])
    advance(node, 2)
    first, second = jobs(node)
    assert (first.state, second.state, second.supersedes_job_id) == ("superseded", "succeeded", first.id)
