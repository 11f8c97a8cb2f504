"""Logging set-up for the entry points: text or JSON lines, and no patient identifiers from libraries.

Our own log lines carry UIDs, AE titles and IP addresses only. Libraries that could echo data set values
(pynetdicom identifiers, pydicom validation warnings) are configured here so they cannot.
"""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _NoTraceback(logging.Filter):
    """Bad input from a peer gets one log line, not a traceback: pynetdicom logs one for every AE title or UID sent
    in bytes that are not ASCII (``pynetdicom.utils``) and for every state machine action a received PDU breaks
    (``pynetdicom.fsm``; the receiving reactor then logs what it did about it). Their lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = record.exc_text = None
        return True


_NO_TRACEBACK = _NoTraceback()


def configure_logging(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    silence_identifier_sources()


def silence_identifier_sources() -> None:
    """Keep data set values (names, IDs, birth dates) out of every log line and warning."""
    from pydicom import config as pydicom_config
    from pynetdicom import _config as pynetdicom_config

    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    # pydicom's validation warnings quote element values; our header parsing is defensive anyway.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    # pynetdicom's INFO/DEBUG output describes PDUs and data sets; our own lines cover what matters.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    for name in ("pynetdicom.utils", "pynetdicom.fsm"):
        peer_input = logging.getLogger(name)
        if _NO_TRACEBACK not in peer_input.filters:
            peer_input.addFilter(_NO_TRACEBACK)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every timer at INFO
