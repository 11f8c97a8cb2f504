"""The model a serving node runs when ``model.path`` does not pin one: the registry's active model, checked
when each study's prediction starts and reloaded when an activation or rollback changed it.

Every processor of a node (and of a scaled-out node) checks the database itself, so all take a new activation at
their next study without being told. The check is one small query; the reload happens once per change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ortho_node.assembly.study import AssembledStudy
from ortho_node.audit.trail import AuditKind, AuditTrail
from ortho_node.inference.batching import DeviceBatcher
from ortho_node.inference.predictor import Locate
from ortho_node.model.registry import ModelEntry, ModelRegistry
from ortho_node.prediction import StudyPrediction

log = logging.getLogger(__name__)

#: Folder -> a ready predictor (the model on the node's device, shared by its job threads).
LoadPredictor = Callable[[Path], DeviceBatcher]


class ModelLoadError(RuntimeError):
    """The active model could not be loaded; the study is not analysed by another model instead."""


class ServedModel:
    """A :class:`~ortho_node.scheduling.pipeline.StudyPredictor` that follows the registry's active model."""

    def __init__(self, registry: ModelRegistry, load: LoadPredictor, audit: AuditTrail) -> None:
        self._registry = registry
        self._load = load
        self._audit = audit
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self.entry = registry.active() if registry.installed() else registry.bundled()
        self.predictor = self._take(self.entry, "at start-up")

    def add_listener(self, changed: Callable[[], None]) -> None:
        """``changed`` is called after each switch to another model (the node's row in the nodes table)."""
        self._listeners.append(changed)

    @property
    def device(self):
        return self.predictor.device

    @property
    def card(self):
        return self.predictor.card

    def _take(self, entry: ModelEntry, when: str) -> DeviceBatcher:
        try:
            predictor = self._load(entry.folder)
        except (OSError, ValueError, RuntimeError) as exc:  # files removed or altered since they were verified
            raise ModelLoadError(f"active model {entry.label} cannot be loaded from {entry.folder}: {exc}") from None
        self._audit.record(AuditKind.MODEL_LOADED, f"model {entry.label} loaded {when}",
                           details={"model_id": entry.id, "name": entry.name, "version": entry.version})
        log.info("model %s loaded %s from %s", entry.label, when, entry.folder)
        return predictor

    def current(self) -> DeviceBatcher:
        """The predictor of the active model, reloaded first when the active model changed."""
        with self._lock:
            active_id = self._registry.active_id()
            if active_id != self.entry.id:
                entry = self._registry.active()
                replaced = self.predictor
                self.predictor = self._take(entry, f"for the next study (was {self.entry.label})")
                self.entry = entry
                replaced.close()  # its studies in flight finish on it; then its weights are let go
                for changed in self._listeners:
                    changed()
            return self.predictor

    def predict(self, assembled: AssembledStudy, *, locate: Locate | None = None) -> StudyPrediction:
        return self.current().predict(assembled, locate=locate)
