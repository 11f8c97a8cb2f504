"""What the model registry and shadow-mode tests share: the node's quick scheduling settings, the ``model``
command, and the rows and audit events it leaves."""

from __future__ import annotations

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from ortho_node.app.cli.main import main
from ortho_node.db.models import AuditEvent

FAST = {"ORTHO_NODE_SCHEDULING_SETTLE_TIME": "0.2", "ORTHO_NODE_SCHEDULING_QUIET_PERIOD": "0.5",
        "ORTHO_NODE_SCHEDULING_LONG_TIMEOUT": "1", "ORTHO_NODE_SCHEDULING_POLL_INTERVAL": "0.2",
        "ORTHO_NODE_MODEL_DEVICE": "cpu", "ORTHO_NODE_MODEL_THREADS": "1"}


def _cli(data_dir, *args) -> int:
    return main(["model", *args, "--data-dir", str(data_dir)])


def _rows(data_dir, model):
    engine = create_engine(f"sqlite:///{data_dir / 'ortho-node.db'}")
    try:
        with Session(engine) as session:
            return list(session.scalars(select(model).order_by(model.id)))
    finally:
        engine.dispose()


def _events(data_dir, prefix="model_"):
    return [(e.kind, e.message) for e in _rows(data_dir, AuditEvent) if e.kind.startswith(prefix)]
