"""Model cards and their weights on disk: ``model_card.json`` beside ``model.safetensors``, one format for the
backbone (``train pretrain``) and the task model (``kind`` says which), one save, one hash check, one read.

Cards written before ``kind`` existed still load: a card with a ``diagnosis`` key is a task model's.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ortho_node import __version__

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
CARD_FORMAT = 1

Card = TypeVar("Card", bound="CardFiles")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into, or its files are inconsistent."""


class CardKind(str, enum.Enum):
    BACKBONE = "backbone"  # one plane's GaussianDiffusion (``checkpoint.ModelCard``)
    SYSTEM = "system"  # the task model (``system.SystemCard``)


def card_kind(values: Mapping[str, Any]) -> CardKind:
    """The kind a card's JSON declares, or for older cards the one its keys imply."""
    if "kind" in values:
        try:
            return CardKind(values["kind"])
        except ValueError:
            raise CheckpointError(f"unknown model card kind {values['kind']!r}") from None
    return CardKind.SYSTEM if "diagnosis" in values else CardKind.BACKBONE


_NAMES = {CardKind.BACKBONE: "backbone", CardKind.SYSTEM: "task-model"}


@dataclass(frozen=True, kw_only=True)
class CardFiles:
    """What every card records about its weights file and the software that wrote it."""

    KIND: ClassVar[CardKind]

    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    software_version: str = __version__
    created: str = ""
    card_format: int = CARD_FORMAT

    def _json_values(self) -> dict[str, Any]:
        """The card's fields as JSON values (each kind turns its own structured fields into plain ones)."""
        return dataclasses.asdict(self)

    @classmethod
    def _from_values(cls: type[Card], values: dict[str, Any]) -> Card:
        """The card from its JSON values (each kind rebuilds its own structured fields)."""
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps({**self._json_values(), "kind": self.KIND.value}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[Card], text: str) -> Card:
        values = json.loads(text)
        if not isinstance(values, dict):
            raise CheckpointError(f"a model card is a JSON object, not {type(values).__name__}")
        if values.get("card_format") != CARD_FORMAT or card_kind(values) is not cls.KIND:
            raise CheckpointError(f"not a {_NAMES[cls.KIND]} card (card_format {values.get('card_format')!r}, "
                                  f"kind {card_kind(values).value})")
        values.pop("kind", None)
        try:
            return cls._from_values(values)
        except CheckpointError:
            raise
        except KeyError as error:
            raise CheckpointError(f"invalid {_NAMES[cls.KIND]} card: no field {error}") from error
        except (ValueError, TypeError) as error:  # a field out of range or of the wrong type
            raise CheckpointError(f"invalid {_NAMES[cls.KIND]} card: {error}") from error


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(weights: Path, expected_sha256: str) -> None:
    """Refuse weights whose hash is not the one their card records (altered or swapped files)."""
    actual = file_sha256(weights)
    if actual != expected_sha256:
        raise CheckpointError(f"{weights}: sha256 {actual} does not match the model card ({expected_sha256})")


def save_card(directory: Path, model: nn.Module, card: Card) -> Card:
    """Write ``model.safetensors`` and ``model_card.json`` (with the weights' hash) into ``directory``.

    Each file is written to a temporary name and renamed, so a crash never leaves a half-written pair that
    looks valid: the card's hash would not match.
    Returns: the card as written (hash, file name and creation time filled in).
    """
    directory.mkdir(parents=True, exist_ok=True)
    weights, card_path = directory / WEIGHTS_FILE, directory / CARD_FILE
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    tmp = weights.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "ortho_node_card": CARD_FILE})
    tmp.chmod(0o644)  # readable like any package file (safetensors creates it 0600)
    tmp.replace(weights)
    written = dataclasses.replace(
        card, weights_file=WEIGHTS_FILE, weights_sha256=file_sha256(weights),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    tmp_card = card_path.with_suffix(".tmp")
    tmp_card.write_text(written.to_json() + "\n", encoding="utf-8")
    tmp_card.replace(card_path)
    return written


def read_card_file(directory: Path, kind: type[Card]) -> Card:
    """The card of ``directory``, which must be of ``kind``."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CARD_FILE}")
    return kind.from_json(path.read_text(encoding="utf-8"))


def read_weights(directory: Path, card: CardFiles) -> dict[str, torch.Tensor]:
    """The tensors of ``directory``'s weights file, once its hash matches ``card``."""
    weights = Path(directory) / card.weights_file
    verify_weights(weights, card.weights_sha256)
    return load_file(str(weights))


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise one CheckpointError listing every missing, unknown and shape-mismatched tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} != model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = [
        f"{label} ({len(items)}): {', '.join(items)}"
        for label, items in (("missing", missing), ("unknown", unknown), ("shape mismatch", mismatched))
        if items
    ]
    if problems:
        raise CheckpointError("checkpoint does not fit the model; " + "; ".join(problems))


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Check, then load ``state`` into ``model`` (strictly)."""
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
