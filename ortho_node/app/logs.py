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
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every timer at INFO
