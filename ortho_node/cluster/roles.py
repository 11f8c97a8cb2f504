"""What one ``ortho-node serve`` process does: receive, process, or both (``cluster.role``)."""

from __future__ import annotations

import enum


class Role(str, enum.Enum):
    ALL = "all"  # one process does everything: the single-node default, the only role on SQLite
    RECEIVE = "receive"  # Storage SCP, catalog, completeness decisions; never loads the model
    PROCESS = "process"  # claims ready studies, analyses them, builds and delivers the results; no DICOM port

    @property
    def receives(self) -> bool:
        return self is not Role.PROCESS

    @property
    def processes(self) -> bool:
        return self is not Role.RECEIVE
