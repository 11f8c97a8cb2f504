"""The node's model registry: task model folders imported into ``<data>/models`` (verified: card readable,
weights hash as the card says, every tensor fitting the card), and the activations that choose which one a node
serves, with who made each and when. No activation: the bundled model. A set ``model.path`` pins the model and
the registry then refuses to activate anything.

Activations form a stack: ``activate`` puts a model on top of the current one, ``rollback`` returns to the
activation the current one replaced (the bundled model below the first). Each step is one row, never an update,
and one audit event in the same transaction.
"""

from __future__ import annotations

import getpass
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit.trail import AuditKind, make_event
from ortho_node.config import BUNDLED_MODEL, Settings
from ortho_node.db.models import ModelActivation, RegisteredModel, ShadowChoice

log = logging.getLogger(__name__)

BUNDLED = "bundled"
MODELS_FOLDER = "models"
SHADOW_FOLDER = "shadow"  # the shadow model's objects, under the data folder (written by inference.shadow)
MAX_BY = 64


class RegistryError(ValueError):
    """A registry request that cannot be done; the message says why (one line for the command line)."""


@dataclass(frozen=True)
class ModelEntry:
    """One model a node can serve: an imported one (``id``) or the bundled one (``id`` None)."""

    id: int | None
    name: str
    version: str
    folder: Path
    weights_sha256: str = ""
    imported_by: str = ""
    imported_at: str = ""

    @property
    def label(self) -> str:
        owner = BUNDLED if self.id is None else f"#{self.id}"
        return f"{owner} {self.name} {self.version}"


@dataclass(frozen=True)
class Activation:
    id: int
    model: ModelEntry
    action: str
    at: str
    by: str


def who(given: str | None) -> str:
    """The name recorded for a change: ``--by``, else the operating-system user."""
    name = (given or "").strip() or getpass.getuser()
    if len(name) > MAX_BY or not name.isprintable():
        raise RegistryError(f"--by: at most {MAX_BY} printable characters, got {name!r}")
    return name


class ModelRegistry:
    """The registry on one node's database and data folder."""

    def __init__(self, session_factory: sessionmaker[Session], data_dir: Path, *, pinned: Path | None = None,
                 bundled: Path = BUNDLED_MODEL, pinned_shadow: str = "") -> None:
        self._session_factory = session_factory
        self._data_dir = Path(data_dir)
        self._pinned = pinned
        self._bundled = bundled
        self._pinned_shadow = pinned_shadow

    @classmethod
    def for_settings(cls, settings: Settings, session_factory: sessionmaker[Session]) -> ModelRegistry:
        return cls(session_factory, settings.data_dir, pinned=Path(settings.model.path) if settings.model.path else None,
                   pinned_shadow=settings.model.shadow)

    @property
    def pinned(self) -> Path | None:
        """The folder ``model.path`` pins (None: the node serves the registry's active model)."""
        return self._pinned

    def installed(self) -> bool:
        """Whether the database has the registry's tables yet (a node before its first migration to 0010)."""
        engine = self._session_factory.kw["bind"]
        if engine.url.get_backend_name() == "sqlite" and not Path(engine.url.database or "").is_file():
            return False  # no node database yet (serve creates it after loading the model): nothing activated
        return inspect(engine).has_table(ModelActivation.__tablename__)

    # -- reading -------------------------------------------------------------------------------------------
    def bundled(self) -> ModelEntry:
        import json

        card = json.loads((self._bundled / "model_card.json").read_text(encoding="utf-8"))
        return ModelEntry(None, card["name"], card["version"], self._bundled, card.get("weights_sha256", ""))

    def _entry(self, row: RegisteredModel | None) -> ModelEntry:
        if row is None:
            return self.bundled()
        return ModelEntry(row.id, row.name, row.version, self._data_dir / row.folder, row.weights_sha256,
                          row.imported_by, row.imported_at.isoformat(timespec="seconds"))

    def models(self) -> list[ModelEntry]:
        """The bundled model, then every imported one, oldest first."""
        with self._session_factory() as session:
            rows = session.scalars(select(RegisteredModel).order_by(RegisteredModel.id)).all()
            return [self.bundled(), *(self._entry(row) for row in rows)]

    def _current(self, session: Session) -> ModelActivation | None:
        return session.scalars(select(ModelActivation).order_by(ModelActivation.id.desc()).limit(1)).first()

    def active_id(self) -> int | None:
        """The id of the active model (None: the bundled one): one small query, made at every study."""
        with self._session_factory() as session:
            current = self._current(session)
            return None if current is None else current.model_id

    def active(self) -> ModelEntry:
        with self._session_factory() as session:
            current = self._current(session)
            return self._entry(None if current is None or current.model_id is None
                               else session.get(RegisteredModel, current.model_id))

    def history(self) -> list[Activation]:
        """Every activation and rollback, newest first."""
        with self._session_factory() as session:
            rows = session.scalars(select(ModelActivation).order_by(ModelActivation.id.desc())).all()
            return [Activation(row.id, self._entry(None if row.model_id is None
                                                   else session.get(RegisteredModel, row.model_id)),
                               row.action, row.at.isoformat(timespec="seconds"), row.by) for row in rows]

    def card(self, entry: ModelEntry) -> dict:
        """The model card of ``entry`` as its folder holds it (its figures, its training record)."""
        return _card_values(entry.folder)

    def find(self, reference: str) -> ModelEntry:
        """A model by id (``3`` or ``#3``), by ``NAME@VERSION``, or ``bundled``."""
        if reference == BUNDLED:
            return self.bundled()
        with self._session_factory() as session:
            row = self._lookup(session, reference)
            return self._entry(row)

    def _lookup(self, session: Session, reference: str) -> RegisteredModel:
        text = reference.removeprefix("#")
        if text.isdigit():
            row = session.get(RegisteredModel, int(text))
        else:
            name, _, version = reference.rpartition("@")
            rows = session.scalars(select(RegisteredModel).where(RegisteredModel.name == name,
                                                                 RegisteredModel.version == version)).all()
            if len(rows) > 1:
                raise RegistryError(f"{reference} names {len(rows)} imported models: use the id "
                                    f"({', '.join(str(r.id) for r in rows)})")
            row = rows[0] if rows else None
        if row is None:
            raise RegistryError(f"no imported model {reference!r} (see `ortho-node model list`)")
        return row

    # -- the shadow model ----------------------------------------------------------------------------------
    @property
    def pinned_shadow(self) -> str:
        """The reference ``model.shadow`` pins ("" : the registry's choice holds)."""
        return self._pinned_shadow

    def shadow(self) -> ModelEntry | None:
        """The candidate run beside the active model (None: no shadow): ``model.shadow`` when set, else the
        newest ``model shadow`` choice. One small query, made at every study."""
        if self._pinned_shadow:
            return self.find(self._pinned_shadow)
        with self._session_factory() as session:
            choice = session.scalars(select(ShadowChoice).order_by(ShadowChoice.id.desc()).limit(1)).first()
            if choice is None or choice.model_id is None:
                return None
            return self._entry(session.get(RegisteredModel, choice.model_id))

    def set_shadow(self, reference: str | None, *, by: str) -> ModelEntry | None:
        """Run the imported model ``reference`` beside the active one from the next study (None: stop); the
        choice recorded with who made it and audited. Refused while ``model.shadow`` pins it, for the bundled
        model and for the active model (it would only agree with itself)."""
        if self._pinned_shadow:
            raise RegistryError(f"model.shadow is set ({self._pinned_shadow}): it pins the shadow model; clear "
                                "model.shadow to choose it here")
        with self._session_factory.begin() as session:
            row = None
            if reference is not None:
                if reference == BUNDLED:
                    raise RegistryError("the bundled model cannot be a shadow: import the candidate model first")
                row = self._lookup(session, reference)
                current = self._current(session)
                if current is not None and current.model_id == row.id:
                    raise RegistryError(f"#{row.id} {row.name} {row.version} is the active model; a shadow is a "
                                        "candidate beside it")
                _verified_card(self._data_dir / row.folder)
            entry = None if row is None else self._entry(row)
            choice = ShadowChoice(model_id=None if row is None else row.id, by=by)
            session.add(choice)
            session.flush()
            kind = AuditKind.MODEL_SHADOW_SET if entry is not None else AuditKind.MODEL_SHADOW_CLEARED
            message = (f"{by} set model {entry.label} as the shadow model" if entry is not None
                       else f"{by} cleared the shadow model")
            session.add(make_event(kind, message, details={"choice_id": choice.id, "by": by,
                                                           "model_id": None if entry is None else entry.id}))
        log.info("%s", message)
        return entry

    # -- changing ------------------------------------------------------------------------------------------
    def import_folder(self, source: Path, *, by: str) -> ModelEntry:
        """Verify ``source`` (card, weights hash, tensors), copy it under ``<data>/models`` and record it.

        Raises :class:`RegistryError` naming what is wrong, or which imported model it already is.
        """
        from ortho_node.model.card import CARD_FILE, file_sha256

        source = Path(source)
        card = _verified_card(source)
        card_sha = file_sha256(source / CARD_FILE)
        with self._session_factory() as session:
            known = session.scalars(select(RegisteredModel).where(RegisteredModel.card_sha256 == card_sha)).first()
            if known is not None:
                raise RegistryError(f"{source}: already imported as model #{known.id} ({known.name} {known.version})")
        relative = f"{MODELS_FOLDER}/{card_sha[:16]}"
        _copy_verified(source, self._data_dir / relative, (CARD_FILE, card.weights_file))
        with self._session_factory.begin() as session:
            row = RegisteredModel(name=card.name, version=card.version, card_sha256=card_sha,
                                  weights_sha256=card.weights_sha256, folder=relative, source=str(source.resolve()),
                                  imported_by=by, card=_card_values(source))
            session.add(row)
            session.flush()
            session.add(make_event(AuditKind.MODEL_IMPORTED, f"model #{row.id} {card.name} {card.version} imported "
                                                             f"by {by}",
                                   details={"model_id": row.id, "weights_sha256": card.weights_sha256,
                                            "card_sha256": card_sha, "source": row.source, "by": by}))
            entry = self._entry(row)
        log.info("model #%s %s %s imported from %s", entry.id, entry.name, entry.version, source)
        return entry

    def _refuse_when_pinned(self) -> None:
        if self._pinned is not None:
            raise RegistryError(f"model.path is set ({self._pinned}): it pins the model this node serves, so "
                                "activations would not be used; clear model.path to serve the registry's active "
                                "model")

    def activate(self, reference: str, *, by: str) -> ModelEntry:
        """Make a model the active one (its files verified again first); a running node takes it at its next
        study."""
        self._refuse_when_pinned()
        with self._session_factory.begin() as session:
            row = None if reference == BUNDLED else self._lookup(session, reference)
            entry = self._entry(row)
            current = self._current(session)
            if (None if current is None else current.model_id) == entry.id:
                raise RegistryError(f"{entry.label} is already the active model")
            if row is not None:
                _verified_card(entry.folder)
            self._record(session, entry, "activate", by, replaces_id=None if current is None else current.id)
        return entry

    def rollback(self, *, by: str) -> ModelEntry:
        """Return to the model the current activation replaced (the bundled model below the first)."""
        self._refuse_when_pinned()
        with self._session_factory.begin() as session:
            current = self._current(session)
            if current is None:
                raise RegistryError("nothing to roll back: no model was ever activated (the bundled model is "
                                    "served)")
            below = None if current.replaces_id is None else session.get(ModelActivation, current.replaces_id)
            if below is None and current.model_id is None:
                raise RegistryError("nothing to roll back: the bundled model is served and no earlier activation "
                                    "remains")
            target = None if below is None or below.model_id is None else session.get(RegisteredModel,
                                                                                     below.model_id)
            entry = self._entry(target)
            if target is not None:
                _verified_card(entry.folder)
            # The stack pops: what ``below`` was stacked on is what the next rollback returns to.
            self._record(session, entry, "rollback", by, replaces_id=None if below is None else below.replaces_id)
        return entry

    def _record(self, session: Session, entry: ModelEntry, action: str, by: str, *, replaces_id: int | None) -> None:
        row = ModelActivation(model_id=entry.id, action=action, by=by, replaces_id=replaces_id)
        session.add(row)
        session.flush()
        kind = AuditKind.MODEL_ACTIVATED if action == "activate" else AuditKind.MODEL_ROLLED_BACK
        verb = "activated" if action == "activate" else "rolled back to"
        session.add(make_event(kind, f"{by} {verb} model {entry.label}",
                               details={"activation_id": row.id, "model_id": entry.id, "name": entry.name,
                                        "version": entry.version, "by": by}))
        log.info("%s %s model %s", by, verb, entry.label)


def _verified_card(folder: Path):
    """The folder's system card once the model loads from it (hash and every tensor checked), else
    :class:`RegistryError` saying why."""
    from ortho_node.model.system import load_system

    if not Path(folder).is_dir():
        raise RegistryError(f"{folder}: not a folder")
    try:
        card = load_system(folder).card
    except (OSError, ValueError, KeyError, TypeError) as exc:  # CheckpointError is a ValueError; bad JSON too
        raise RegistryError(f"{folder}: not a usable task model: {exc}") from None
    if Path(card.weights_file).name != card.weights_file:  # the card names a file of its own folder, no path
        raise RegistryError(f"{folder}: the card's weights_file {card.weights_file!r} is not a plain file name")
    return card


def _card_values(folder: Path) -> dict:
    import json

    from ortho_node.model.card import CARD_FILE

    return json.loads((Path(folder) / CARD_FILE).read_text(encoding="utf-8"))


def _copy_verified(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copy ``names`` into a scratch folder beside ``target``, verify the copy loads, then rename it into place
    (a crash leaves a scratch folder, never a half-copied model under its final name)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target.parent))
    try:
        for name in names:
            shutil.copy2(source / name, scratch / name)
        _verified_card(scratch)
        if target.exists():  # left by an import that crashed before its row was written: same card hash
            shutil.rmtree(target)
        scratch.rename(target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
