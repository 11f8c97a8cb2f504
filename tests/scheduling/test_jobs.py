"""The job table: retries with capped backoff, giving up, start-up recovery of timers, reprocessing, CLI."""

from __future__ import annotations

import datetime as dt
import functools
import json

from ortho_node.app.cli import main as cli
from ortho_node.clock import utcnow
from ortho_node.scheduling.pipeline import Pipeline
from ortho_node.prediction import StudyNotAnalysable
from ortho_node.scheduling.watcher import timer_key
from tests.assembly.factory import advance, assemblies, audit_kinds, jobs, send, study


class FlakyPipeline(Pipeline):
    """Fails its first ``failures`` runs, as a GPU running out of memory would."""

    def __init__(self, session_factory, failures: int) -> None:
        super().__init__(session_factory)
        self.failures = failures

    def run(self, assembled, *, job_id=None):
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("CUDA out of memory")
        return super().run(assembled, job_id=job_id)


def _flaky_node(manual_node, failures: int, **overrides):
    return manual_node(pipeline_factory=functools.partial(FlakyPipeline, failures=failures),
                       **{"scheduling.retry_base": 30.0, "scheduling.retry_cap": 40.0, **overrides})


def _send_study(node) -> str:
    study_uid, planes = study()
    send(node, [ds for group in planes for ds in group])
    return study_uid


def test_failed_attempts_retry_with_capped_backoff(manual_node, database_url):
    node = _flaky_node(manual_node, failures=2, **{"database.url": database_url})
    _send_study(node)
    advance(node, 2)
    [job] = jobs(node)
    assert (job.state, job.attempts, job.last_error) == ("pending", 1, "RuntimeError: CUDA out of memory")
    started = node.scheduler.time.now()
    assert abs((job.next_attempt_at.replace(tzinfo=dt.timezone.utc) - started).total_seconds() - 30) < 1
    advance(node, 29)
    assert jobs(node)[0].attempts == 1
    advance(node, 1)
    [job] = jobs(node)
    assert (job.state, job.attempts) == ("pending", 2)  # next wait: 60 s capped at 40 s
    advance(node, 40)
    [job] = jobs(node)
    assert (job.state, job.attempts, job.last_error) == ("succeeded", 3, None)
    assert len(assemblies(node)) == 1
    assert audit_kinds(node).count("job_retry") == 2


def test_job_fails_for_good_after_max_attempts(manual_node):
    node = _flaky_node(manual_node, failures=5, **{"scheduling.max_attempts": 2})
    _send_study(node)
    advance(node, 2)
    advance(node, 30)
    [job] = jobs(node)
    assert (job.state, job.attempts) == ("failed", 2)
    assert "job_failed" in audit_kinds(node)
    advance(node, 3600)
    assert len(jobs(node)) == 1


class UnanalysablePipeline(Pipeline):
    def run(self, assembled, *, job_id=None):
        raise StudyNotAnalysable("no model for joint 'elbow'")


def test_a_study_that_cannot_be_analysed_is_skipped_at_once_without_retries(manual_node):
    # Issue 22: a study the model cannot analyse ends ``skipped`` with its cause (it was ``failed`` before).
    node = manual_node(pipeline_factory=UnanalysablePipeline)
    _send_study(node)
    advance(node, 2)
    [job] = jobs(node)
    assert (job.state, job.attempts) == ("skipped", 1)
    assert job.last_error == "no model for joint 'elbow'"
    kinds = audit_kinds(node)
    assert "job_skipped" in kinds and "job_retry" not in kinds and "job_failed" not in kinds
    advance(node, 3600)
    assert [(j.state, j.attempts) for j in jobs(node)] == [("skipped", 1)]


def test_restart_rearms_timers_for_studies_still_receiving(manual_node, tmp_path):
    first = manual_node()
    study_uid, planes = study(("sagittal", "coronal"))
    send(first, [ds for group in planes for ds in group])
    first.stop()
    second = manual_node()  # same data folder and database
    assert timer_key(study_uid) in second.scheduler.time.pending()
    advance(second, 121)
    [job] = jobs(second)
    assert job.state == "succeeded" and "axial missing" in job.reason


def test_cli_studies_jobs_and_reprocess(manual_node, make_settings, monkeypatch, capsys):
    node = manual_node()
    study_uid = _send_study(node)
    advance(node, 2)
    monkeypatch.setenv("ORTHO_NODE_STORAGE_DATA_DIR", str(node.settings.data_dir))
    assert cli.main(["studies", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assembly = entry["assembly"]
    assert (assembly["joint"], assembly["laterality"], entry["job"]["state"]) == ("knee", "R", "succeeded")
    assert set(assembly["planes"]) == {"sagittal", "coronal", "axial"}
    assert assembly["planes"]["sagittal"]["reason"].startswith("PD FS (description keyword PD)")
    assert assembly["completeness_reason"].startswith("complete by sender signals")

    assert cli.main(["reprocess", study_uid]) == 0
    assert "queued" in capsys.readouterr().out
    # The CLI queues on the wall clock; the node's manual clock lags by however long the test has run so far.
    lag = max(0.0, (utcnow() - node.scheduler.time.now()).total_seconds())
    advance(node, 5 + lag)  # the serving node polls the job table
    assert cli.main(["jobs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(j["state"], j["reason"]) for j in listed] == [("succeeded", "reprocess requested"),
                                                           ("superseded", entry["job"]["reason"])]
    assert cli.main(["reprocess", "1.2.3.4"]) == 1
