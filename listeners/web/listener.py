"""One ASGI application served by uvicorn on its own thread and event loop, started and stopped by the node.

The socket is bound in :meth:`WebListener.start`, on the caller's thread, so a port in use fails the start with
an ``OSError`` (``serve`` names the key) and port 0 is known at once. :meth:`WebListener.stop` lets uvicorn close
the listening socket, finish requests in flight (``GRACE`` seconds at most) and end its loop, then joins the
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)

GRACE = 5.0  # s a stopping listener waits for requests in flight
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class TlsFiles:
    """PEM certificate chain and private key of an HTTPS listener."""

    certificate: str
    private_key: str

    def context(self) -> ssl.SSLContext:
        """The server context uvicorn builds from the same files (TLS 1.2 or newer): loading it here checks the
        files at start-up, before anything listens; raises ``ssl.SSLError`` or ``OSError``."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.certificate, self.private_key)
        return context


class WebListener:
    """``app`` on ``host``:``port`` (0 picks a free port; :attr:`port` tells which after :meth:`start`), or on
    ``sock``, a listening socket bound elsewhere (a worker process of a shared port)."""

    def __init__(self, app: ASGIApp, host: str, port: int, *, name: str, tls: TlsFiles | None = None,
                 sock: socket.socket | None = None) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.name = name
        self.tls = tls
        self._given = sock
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and bool(self._server and self._server.started)

    def start(self) -> None:
        if self.tls is not None:
            self.tls.context()  # a bad file fails here, in the caller's thread, not inside uvicorn's
        self._socket = self._given if self._given is not None else _bind(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            self.app, loop="asyncio", http="h11", ws="none", lifespan="off", log_config=None, log_level="warning",
            access_log=False, server_header=False, proxy_headers=False, timeout_graceful_shutdown=int(GRACE),
            ssl_certfile=self.tls.certificate if self.tls else None,
            ssl_keyfile=self.tls.private_key if self.tls else None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(self._server, self._socket),),
                                        name=f"{self.name}-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"{self.name}: the web server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        log.info("%s on %s://%s:%d", self.name, self.scheme, self.host, self.port)

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        await server.serve(sockets=[sock])

    def stop(self) -> None:
        """Close the listener, let requests in flight finish (``GRACE`` s at most), end the loop; idempotent.

        Idle keep-alive connections do not hold the stop up: once no request is in flight they are aborted (a
        TLS connection would otherwise wait for the client's close_notify)."""
        server, thread, loop = self._server, self._thread, self._loop
        if server is not None:
            server.should_exit = True
        if thread is not None and server is not None:
            deadline = time.monotonic() + GRACE + 5
            while thread.is_alive() and time.monotonic() < deadline:
                thread.join(0.1)
                if loop is not None and not server.server_state.tasks:  # nothing in flight: idle connections
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing left to abort
                        loop.call_soon_threadsafe(_abort_idle, server)
            if thread.is_alive():
                log.warning("%s: the web server thread did not end within %.0f s", self.name, GRACE + 5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = self._loop = None


def _abort_idle(server: uvicorn.Server) -> None:
    """On the server's loop: drop the connections left once no request is in flight."""
    if server.server_state.tasks:
        return
    for connection in list(server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abort()


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket as uvicorn binds one (SO_REUSEADDR), IPv6 where the host says so."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock
