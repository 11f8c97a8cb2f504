"""Where received instances are kept: the :class:`InstanceStore` interface every part of the node goes through,
and its file-system implementation, :class:`LocalInstanceStore`.

An instance is named by its key, ``instances/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
(the catalog's ``instances.file_path``). UIDs are validated against the DICOM UID grammar before they become
key parts, so dataset content can never name a place outside the store. Locally, a file appears under its final
name only complete and fsynced (write to ``<data>/tmp``, fsync, rename, fsync the folder).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class InvalidUID(ValueError):
    """A UID that does not follow PS3.5 section 9.1 and so is unsafe as a file name."""


class StorageFull(OSError):
    """The disk (or quota) is full; nothing partial was left behind."""


def is_valid_uid(value: str | None) -> bool:
    return bool(value) and len(value) <= 64 and _UID.match(value) is not None


def check_uid(name: str, value: str) -> str:
    if not is_valid_uid(value):
        raise InvalidUID(f"{name} is not a valid DICOM UID")
    return value


@dataclass(frozen=True)
class StoredFile:
    key: str
    size: int
    sha256: str


class InstanceStore(Protocol):
    """Received instances by key: what intake, recovery, assembly, inference and retention use, so another store
    (an object store) can take the file system's place. Keys come from :meth:`key` or the catalog; a key that
    would leave the store raises :class:`InvalidUID`."""

    def key(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """The key of an instance (:class:`InvalidUID` for a UID that is not one)."""

    def write(self, key: str, payload: bytes) -> StoredFile:
        """Keep ``payload`` durably before returning (the sender is acknowledged next); :class:`StorageFull`
        when there is no room, with nothing partial left under ``key``. The same as :meth:`put` then
        :meth:`sync` of the one key."""

    def put(self, key: str, payload: bytes) -> StoredFile:
        """Keep ``payload`` complete under ``key``, its bytes durable; the key itself is durable only after
        :meth:`sync` (intake syncs a batch of keys at once, before it acknowledges any). Failures as :meth:`write`."""

    def sync(self, keys: Iterable[str]) -> None:
        """Make the keys written by :meth:`put` durable, each container (folder) once; :class:`OSError` when that
        fails (the objects may still be found by the crash recovery's scan)."""

    def read(self, key: str) -> bytes:
        """The stored bytes; :class:`FileNotFoundError` when there are none."""

    def local_path(self, key: str) -> Path:
        """A local file with the instance's bytes, for readers that open files (pydicom): the file itself where
        the store is a file system."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> bool:
        """Remove the instance; False when it was already gone (an interrupted pass, another purger)."""

    def prune_empty(self, keys: Iterable[str]) -> int:
        """After deleting ``keys``: drop the containers (folders) they left empty; returns how many went."""

    def keys(self) -> Iterator[str]:
        """Every stored instance's key (the crash recovery's scan)."""

    def free_bytes(self) -> int:
        """Room left for new instances (the Storage SCP refuses associations below ``storage.min_free_mb``)."""

    def clear_partial_files(self, *, older_than: float | None = None) -> int:
        """Remove what writes interrupted by a crash left (never acknowledged); ``older_than`` (seconds): only
        leftovers untouched that long (other receivers write now). Returns how many went."""


class LocalInstanceStore:
    """:class:`InstanceStore` on the data folder's ``instances`` area (a local disk, or NFS shared by a cluster)."""

    def __init__(self, data_dir: Path, *, fsync: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.instances_dir = self.data_dir / "instances"
        self.tmp_dir = self.data_dir / "tmp"
        self.fsync = fsync
        self._new_folders: set[Path] = set()  # series folders made, their parents not yet fsynced
        self._folders_lock = threading.Lock()
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def key(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        check_uid("StudyInstanceUID", study_uid)
        check_uid("SeriesInstanceUID", series_uid)
        check_uid("SOPInstanceUID", sop_uid)
        return f"instances/{study_uid}/{series_uid}/{sop_uid}.dcm"

    def local_path(self, key: str) -> Path:
        path = (self.data_dir / key).resolve()
        if not path.is_relative_to(self.data_dir):
            raise InvalidUID(f"path {key!r} escapes the data folder")
        return path

    def read(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def write(self, key: str, payload: bytes) -> StoredFile:
        """Write ``payload`` durably under ``key``; raise :class:`StorageFull` on ENOSPC/EDQUOT."""
        stored = self.put(key, payload)
        self.sync([key])
        return stored

    def put(self, key: str, payload: bytes) -> StoredFile:
        """Write ``payload`` under ``key``, its data fdatasynced; the rename is durable after :meth:`sync`."""
        parts = key.split("/")
        if key.startswith("/") or ".." in parts or "" in parts:
            raise InvalidUID(f"path {key!r} escapes the data folder")
        final = self.data_dir / key  # built from validated UIDs: no resolve() on the hot path
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            if not final.parent.is_dir():
                # Noted before it exists: a thread that finds it made must not skip its parents' fsync in sync().
                if self.fsync:
                    with self._folders_lock:
                        self._new_folders.add(final.parent)
                final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fdatasync(fd)  # data and size; the rename is made durable by the folder's fsync
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(exc.errno, "no space left for the instance") from exc
            raise
        return StoredFile(key, len(payload), hashlib.sha256(payload).hexdigest())

    def sync(self, keys: Iterable[str]) -> None:
        """One fsync per series folder, however many of its files a batch renamed into it; a folder made since
        its last sync also has its study folder and the instances folder fsynced, so its link survives a crash."""
        if not self.fsync:
            return
        folders = {(self.data_dir / key).parent for key in keys}
        with self._folders_lock:
            new = folders & self._new_folders
        for parent in sorted({p for folder in new for p in (folder.parent, folder.parent.parent)}):
            fsync_folder(parent)
        for folder in sorted(folders):
            fsync_folder(folder)
        with self._folders_lock:
            self._new_folders -= new

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

    def delete(self, key: str) -> bool:
        try:
            self.local_path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def prune_empty(self, keys: Iterable[str]) -> int:
        return remove_empty_folders({self.local_path(key).parent for key in keys}, stop=self.instances_dir)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    def clear_partial_files(self, *, older_than: float | None = None) -> int:
        """Remove leftovers of writes interrupted by a crash; they were never acknowledged. ``older_than``
        (seconds): only files untouched that long, when other receivers share the folder and write into it now."""
        removed = 0
        cutoff = None if older_than is None else time.time() - older_than
        for leftover in self.tmp_dir.glob("*.part"):
            try:
                if cutoff is not None and leftover.stat().st_mtime > cutoff:
                    continue  # another receiver's write in progress
            except FileNotFoundError:  # that write finished (renamed) while we looked
                continue
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def keys(self) -> Iterator[str]:
        for path in self.instances_dir.glob("*/*/*.dcm"):
            yield path.relative_to(self.data_dir).as_posix()


def write_file_durably(path: Path, payload: bytes, *, fsync: bool = True) -> None:
    """Write ``path`` so that it is either absent or complete: a ``.partial`` file beside it, fsynced, then
    renamed. The caller fsyncs the folder (once for several files) to make the renames durable."""
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as handle:
        handle.write(payload)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    partial.replace(path)


def fsync_folder(path: Path) -> None:
    """Make a folder's entries (a rename, a new file or folder) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
