"""Where received instances live on disk, and how they get there durably.

Layout: ``<data>/instances/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. UIDs are
validated against the DICOM UID grammar before they become path components, so dataset content can never
name a path outside the data folder. A file appears under its final name only complete and fsynced
(write to ``<data>/tmp``, fsync, rename, fsync the folder).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

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
    relative_path: str
    size: int
    sha256: str


class InstanceStore:
    """The data folder's instance area: durable writes, lookups, free-space checks."""

    def __init__(self, data_dir: Path, *, fsync: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.instances_dir = self.data_dir / "instances"
        self.tmp_dir = self.data_dir / "tmp"
        self.fsync = fsync
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        check_uid("StudyInstanceUID", study_uid)
        check_uid("SeriesInstanceUID", series_uid)
        check_uid("SOPInstanceUID", sop_uid)
        return f"instances/{study_uid}/{series_uid}/{sop_uid}.dcm"

    def absolute(self, relative_path: str) -> Path:
        path = (self.data_dir / relative_path).resolve()
        if not path.is_relative_to(self.data_dir):
            raise InvalidUID(f"path {relative_path!r} escapes the data folder")
        return path

    def write(self, relative_path: str, payload: bytes) -> StoredFile:
        """Write ``payload`` durably under ``relative_path``; raise :class:`StorageFull` on ENOSPC/EDQUOT."""
        parts = relative_path.split("/")
        if relative_path.startswith("/") or ".." in parts or "" in parts:
            raise InvalidUID(f"path {relative_path!r} escapes the data folder")
        final = self.data_dir / relative_path  # built from validated UIDs: no resolve() on the hot path
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            if not final.parent.is_dir():
                final.parent.mkdir(parents=True, exist_ok=True)
                if self.fsync:  # the new study/series folders must survive a crash too
                    fsync_folder(final.parent.parent)
                    fsync_folder(final.parent.parent.parent)
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
            if self.fsync:
                fsync_folder(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(exc.errno, "no space left for the instance") from exc
            raise
        return StoredFile(relative_path, len(payload), hashlib.sha256(payload).hexdigest())

    def exists(self, relative_path: str) -> bool:
        return self.absolute(relative_path).is_file()

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

    def iter_instance_files(self):
        yield from self.instances_dir.glob("*/*/*.dcm")


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
