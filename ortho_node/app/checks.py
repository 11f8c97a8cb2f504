"""Checks that find the node's database and its start-up needs, each failure one line for the operator.

Admin commands read a node that ``serve`` or ``db upgrade`` made: they must never create a database of their
own (an empty SQLite file would hide the real one). ``serve`` checks its ports, data folder and database before
the slow work (loading the model, migrating), so that a port in use costs a second, not a minute.
"""

from __future__ import annotations

import errno
import socket
import ssl
import tempfile
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ortho_node.config import Settings

WHERE_FLAGS = "--data-dir / --config / ORTHO_NODE_CONFIG"


class StartupError(RuntimeError):
    """The node cannot be found or cannot start; the message is one line naming the setting or the path."""


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def open_node_database(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the node's existing, migrated database; :class:`StartupError` when there is none.

    Nothing is created: a missing SQLite file is reported before an engine exists (SQLAlchemy would create
    the file and its folder on first connect).
    """
    from ortho_node.db.engine import make_engine, make_session_factory

    url = settings.database_url
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StartupError(f"no node database at {path}: start `ortho-node serve` or run `ortho-node db upgrade` "
                           f"({WHERE_FLAGS})")
    engine = make_engine(url, busy_timeout=settings.database.busy_timeout)
    _require_schema(engine, str(path) if path is not None else redacted(url))
    return make_session_factory(engine)


def _require_schema(engine: Engine, where: str) -> None:
    from alembic.runtime.migration import MigrationContext

    from ortho_node.db.migrations import head_revision

    try:
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise StartupError(f"cannot reach the node database at {where}: {_first_line(exc)}") from None
    if revision is None:
        raise StartupError(f"no node database at {where} (no schema): start `ortho-node serve` or run "
                           f"`ortho-node db upgrade` ({WHERE_FLAGS})")
    head = head_revision()
    if revision != head:
        raise StartupError(f"the node database at {where} has schema revision {revision}, this ortho-node "
                           f"needs {head}: run `ortho-node db upgrade`")


def check_database_reachable(settings: Settings) -> None:
    """A server database answers ``SELECT 1``; a SQLite file not there yet (the migration makes it) can be
    made. Creates nothing."""
    url = settings.database_url
    path = sqlite_path(url)
    if path is not None and not path.exists():
        check_writable_folder(path.parent, "database.url")
        return
    from ortho_node.db.engine import make_engine

    engine = make_engine(url, busy_timeout=settings.database.busy_timeout)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise StartupError(f"database.url: cannot reach {redacted(url)}: {_first_line(exc)}") from None
    finally:
        engine.dispose()


def check_writable_folder(folder: Path, key: str) -> None:
    """``folder`` exists or can be made, and a file can be written in it.

    Leaves nothing behind (a start-up that fails later, on the model, leaves no trace): the folders it had to
    make and its test file are removed again. Writing is the only test that also catches a read-only mount.
    """
    if folder.exists() and not folder.is_dir():
        raise StartupError(f"{key}: {folder} exists and is not a folder")
    absolute = folder.absolute()
    made = [path for path in (absolute, *absolute.parents) if not path.exists()]  # deepest first
    try:
        absolute.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=absolute, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise StartupError(f"{key}: folder {folder} cannot be created or written: {exc.strerror or exc}") from None
    finally:
        for path in made:
            if path.is_dir():
                path.rmdir()


def check_port_free(host: str, port: int, key: str) -> None:
    """Bind (host, port) as the listeners do (SO_REUSEADDR, so a port in TIME_WAIT passes) and let it go.

    Port 0 always passes: the listener picks a free one.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"{key}: cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"{key}: port {port} on {host} is already in use (another ortho-node or "
                                   f"DICOM server?)") from None
            raise StartupError(f"{key}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def listening_ports(settings: Settings) -> list[tuple[str, str, int]]:
    """(key, host, port) of every listener ``serve`` will open (a processor opens no DICOM port)."""
    ports = [("dicom.port", settings.dicom.host, settings.dicom.port)] if settings.cluster.role != "process" else []
    if settings.console.enabled:
        ports.append(("console.port", settings.console.host, settings.console.port))
    if settings.metrics.enabled:
        ports.append(("metrics.port", settings.metrics.host, settings.metrics.port))
    if serves_own_dicomweb(settings):
        ports.append(("dicomweb.port", settings.dicomweb.host, settings.dicomweb.port))
    return ports


def serves_own_dicomweb(settings: Settings) -> bool:
    """STOW-RS on a listener of its own: a receiver (processors store nothing) with dicomweb.own_listener."""
    dicomweb = settings.dicomweb
    return dicomweb.enabled and dicomweb.own_listener and settings.cluster.role != "process"


def check_ports(settings: Settings) -> None:
    ports = listening_ports(settings)
    seen: dict[int, str] = {}
    for key, _host, port in ports:
        if port and port in seen:
            raise StartupError(f"{key}: port {port} is also {seen[port]}")
        seen[port] = key
    for key, host, port in ports:
        check_port_free(host, port, key)


def check_console_tls(settings: Settings) -> None:
    """The console's (and the DICOMweb listener's) certificate and key load and belong together (the files'
    existence is checked with the settings)."""
    console, dicomweb = settings.console, settings.dicomweb
    if console.enabled and console.tls:
        _check_key_pair("console", console.tls_cert, console.tls_key)
    if serves_own_dicomweb(settings) and dicomweb.tls:
        _check_key_pair("dicomweb", dicomweb.tls_cert, dicomweb.tls_key)


def _check_key_pair(section: str, certificate: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certificate, key)
    except (ssl.SSLError, OSError) as exc:
        raise StartupError(f"{section}.tls_cert / {section}.tls_key: cannot be loaded ({certificate}, "
                           f"{key}): {getattr(exc, 'reason', None) or exc}") from None


def preflight(settings: Settings) -> None:
    """Everything ``serve`` can check in a second, before it loads the model and migrates the database."""
    check_ports(settings)
    check_console_tls(settings)
    check_writable_folder(settings.data_dir, "storage.data_dir")
    check_database_reachable(settings)


def _first_line(exc: SQLAlchemyError) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__
