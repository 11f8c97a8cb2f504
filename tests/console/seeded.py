"""A node with the console and metrics on, that has processed a synthetic knee study end to end: received
over C-STORE, assembled, a stand-in predictor (the study's known prediction: the model is not faked, it is
absent), result objects built and written, delivered to a second node acting as PACS and flagged for a
destination that rejects us. Shared by tests/console and tests/operations."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import func, select

from ortho_node.config import load_settings
from ortho_node.db.models import DeliveryItem
from listeners.console.passwords import hash_password
from ortho_node.scheduling.timers import ManualTime
from tests.assembly.factory import EndedAssociations, advance, store
from tests.reports.study_factory import make_knee_study

USER, PASSWORD = "admin", "correct horse battery"  # a viewer (no role in the entry)
OPERATOR, OPERATOR_PASSWORD = "oper", "operator horse battery"


class KnownPrediction:
    """Stands in for ``ortho_node.inference.Predictor`` (issue 6): returns the study's ground truth."""

    def __init__(self, prediction) -> None:
        self.prediction = prediction
        self.calls = 0

    def predict(self, assembled, *, locate=None):
        assert assembled.study_instance_uid == self.prediction.study_instance_uid
        self.calls += 1
        return self.prediction


@dataclass
class Seeded:
    node: object
    pacs: object
    study_uid: str
    predictor: KnownPrediction

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.node.console.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.node.metrics.port}"

    def stop(self) -> None:
        self.node.stop()
        self.pacs.stop()


def _settings(folder: Path, **overrides):
    values = {"dicom.host": "127.0.0.1", "dicom.port": 0, "storage.data_dir": str(folder),
              "storage.min_free_mb": 0, "storage.fsync": False, "dicom.acse_timeout": 5.0,
              "dicom.network_timeout": 10.0, "delivery.timeout": 5.0, "dicom.workers": 1}
    values.update(overrides)
    return load_settings(environ={}, overrides=values)


def seed(tmp: Path, *, operator: bool = False) -> Seeded:
    """``operator``: also a console user with the operator role (``OPERATOR``); the tests that act use a seeded
    node of their own, so the shared one keeps the state the read-only tests assert."""
    from ortho_node.app.node import Node

    knee = make_knee_study(tmp / "knee")
    pacs = Node(_settings(tmp / "pacs", **{"dicom.ae_title": "PACS"}))
    pacs.prepare()
    pacs.start()
    predictor = KnownPrediction(knee.prediction)
    settings = _settings(
        tmp / "node", **{"console.enabled": True, "console.port": 0,
                         "console.users": [f"{USER}:{hash_password(PASSWORD)}"] + (
                             [f"{OPERATOR}:operator:{hash_password(OPERATOR_PASSWORD)}"] if operator else []),
                         "metrics.enabled": True, "metrics.port": 0,
                         "destinations": [f"PACS=PACS@127.0.0.1:{pacs.scp.port}",
                                          f"ARCHIVE=NOTTHEPACS@127.0.0.1:{pacs.scp.port}"]})
    node = Node(settings, time=ManualTime(), predictor=predictor)
    node.ended = EndedAssociations()
    node.intake.add_listener(node.ended)
    node.prepare()
    node.start()
    files = [path for paths in knee.paths.values() for path in paths]
    store(node.scp.port, [dcmread(path) for path in files])
    node.ended.wait()
    advance(node, 11)  # quiet period: ready, assembled, predicted, built, queued
    _wait_for_deliveries(node)
    return Seeded(node, pacs, knee.prediction.study_instance_uid, predictor)


def _wait_for_deliveries(node, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.session_factory() as session:
            total = session.scalar(select(func.count(DeliveryItem.id)))
            pending = session.scalar(select(func.count(DeliveryItem.id)).where(DeliveryItem.state == "pending"))
        if total and not pending:
            return
        time.sleep(0.2)
    raise AssertionError("deliveries did not finish")
