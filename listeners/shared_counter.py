"""An integer shared by the storage processes: the open associations, for ``dicom.max_associations``.

Its own small module because a spawned worker unpickles it before anything else: importing it must not
pull in pydicom (and with it numpy) ahead of the worker's own start-up.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SharedCounter:
    """An integer shared by the parent and its workers (the open associations, for
    ``dicom.max_associations``): eight bytes of a memory-mapped file, changed under ``flock``.

    Unlike the semaphore of a ``multiprocessing.Value``, the kernel releases the lock of a worker killed
    while holding it, instead of leaving every other process blocked on it.
    """

    _LAYOUT = struct.Struct("<q")

    def __init__(self, path: str) -> None:
        self._path = path
        self._open()

    @classmethod
    def create(cls) -> SharedCounter:
        fd, path = tempfile.mkstemp(prefix="ortho-node-associations-")
        try:
            os.write(fd, bytes(cls._LAYOUT.size))
        finally:
            os.close(fd)
        return cls(path)

    def _open(self) -> None:
        self._fd = os.open(self._path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, self._LAYOUT.size)
        self._threads = threading.Lock()  # flock does not exclude threads sharing one open file

    def __getstate__(self) -> dict[str, str]:
        return {"path": self._path}

    def __setstate__(self, state: dict[str, str]) -> None:
        self._path = state["path"]
        self._open()

    @contextmanager
    def get_lock(self) -> Iterator[None]:
        with self._threads:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    @property
    def value(self) -> int:
        return self._LAYOUT.unpack_from(self._map)[0]

    @value.setter
    def value(self, number: int) -> None:
        self._LAYOUT.pack_into(self._map, 0, number)

    def remove(self) -> None:
        """Parent, at stop: the file goes (mappings in running processes stay valid)."""
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
