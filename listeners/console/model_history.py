"""What the console's Models page shows (issue 26): the model this node serves, the shadow candidate and how
far it agrees with the active model, every imported model with its held-out test figures, and every activation
and rollback with who did it. Read from the registry (``ortho_node.model.registry``) and the shadow results
(``ortho_node.inference.agreement``); changes stay with ``ortho-node model``, on the server, where the model
folders are."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from ortho_node.inference.agreement import agreement_reports
from ortho_node.model.registry import ModelEntry, ModelRegistry

#: The card's figure per task, named as the validation report names it.
SCORE_NAMES = {"knee-seg": "mean Dice", "knee-dx": "macro AUC", "ankle-dx": "macro AUC",
               "shoulder-dx": "macro AUC"}


@dataclass(frozen=True)
class ModelRow:
    entry: ModelEntry
    imported_at: dt.datetime | None
    scores: tuple[tuple[str, str, float], ...]  # (task, figure name, value) from the card's test split
    active: bool
    shadow: bool


@dataclass(frozen=True)
class HistoryRow:
    at: dt.datetime
    action: str  # activate, rollback
    model: ModelEntry
    by: str


@dataclass(frozen=True)
class ModelOverview:
    pinned: Path | None  # model.path: the node serves this folder, whatever the registry says
    active: ModelEntry
    shadow: ModelEntry | None
    models: tuple[ModelRow, ...]
    history: tuple[HistoryRow, ...]
    agreement: tuple[dict, ...] = ()  # per pair of shadow and active versions (``model agreement --json``)


def card_scores(card: dict) -> tuple[tuple[str, str, float], ...]:
    metrics = card.get("metrics") or {}
    return tuple((task, name, float(metrics[f"{task}/test/score"])) for task, name in SCORE_NAMES.items()
                 if isinstance(metrics.get(f"{task}/test/score"), (int, float)))


def model_overview(registry: ModelRegistry, session_factory: sessionmaker[Session]) -> ModelOverview:
    if not registry.installed():  # a database before migration 0010: the bundled model, nothing recorded
        return ModelOverview(registry.pinned, registry.bundled(), None, (), ())
    active, shadow = registry.active(), registry.shadow()
    rows = tuple(ModelRow(entry, _time(entry.imported_at), card_scores(registry.card(entry)),
                          registry.pinned is None and entry.id == active.id,
                          shadow is not None and entry.id == shadow.id)
                 for entry in registry.models())
    history = tuple(HistoryRow(_time(a.at), a.action, a.model, a.by) for a in registry.history())
    with session_factory() as session:
        agreement = tuple(agreement_reports(session))
    return ModelOverview(registry.pinned, active, shadow, rows, history, agreement)


def _time(iso: str) -> dt.datetime | None:
    return dt.datetime.fromisoformat(iso) if iso else None
