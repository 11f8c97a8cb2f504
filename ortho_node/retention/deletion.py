"""Deleting files for the purger: one study's deletion as reported, files unlinked whether or not they are
still there, emptied folders removed."""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


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


def remove_empty_folders(folders: Iterable[Path], *, stop: Path, workers: int = 8) -> int:
    """Remove each folder and its parents up to ``stop`` while they are empty, deepest first; returns how many
    went. A folder that is not empty holds something stored after the decision (a new instance of the study)
    and stays; a folder removed just as the intake writes into it fails that one C-STORE as transient (0xA700),
    which the sender retries. Each level runs on a few threads: a removal waits on the file system's journal
    (3.5 ms each on the 2-core test machine's ext4, 0.25 ms with 8 at once)."""
    level = {folder for folder in folders if folder != stop and folder.is_relative_to(stop)}
    removed = 0
    with ThreadPoolExecutor(max(1, min(workers, len(level)))) as pool:
        while level:
            depth = max(len(folder.parts) for folder in level)
            batch = sorted(folder for folder in level if len(folder.parts) == depth)
            level.difference_update(batch)
            gone = [folder for folder, ok in zip(batch, pool.map(_rmdir, batch)) if ok]
            removed += len(gone)
            level.update(f.parent for f in gone if f.parent != stop and f.parent.is_relative_to(stop))
    return removed


def _rmdir(folder: Path) -> bool:
    try:
        os.rmdir(folder)
    except OSError:  # not empty (or already gone): it and its parents stay
        return False
    return True


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
