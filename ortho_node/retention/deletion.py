"""Deleting files for the purger: one study's deletion as reported, files unlinked whether or not they are
still there, emptied folders removed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ortho_node.intake.storage import remove_empty_folders

__all__ = ["Deletion", "delete_files", "file_size", "remove_empty_folders"]  # the results' folders use it too


@dataclass(frozen=True)
class Deletion:
    """One study's files deleted (or, in a dry run, that would be)."""

    study_instance_uid: str
    what: str  # instances, results, superseded
    reason: str
    files: int
    bytes: int

    def as_dict(self) -> dict[str, object]:
        return {"study_instance_uid": self.study_instance_uid, "what": self.what, "reason": self.reason,
                "files": self.files, "bytes": self.bytes}


def delete_files(paths: Iterable[Path]) -> int:
    """Unlink each file; returns how many were already gone (an earlier interrupted pass, another purger)."""
    gone = 0
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            gone += 1
    return gone


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
