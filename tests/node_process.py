"""Run ``ortho-node serve`` as a real subprocess on a free loopback port (for crash and log tests)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from ortho_node.delivery.scu import RemoteNode, echo_peer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NodeProcess:
    def __init__(self, data_dir: Path, *, port: int | None = None, log_level: str = "INFO",
                 extra_env: dict[str, str] | None = None, ready_tls: ssl.SSLContext | None = None,
                 new_session: bool = False) -> None:
        """``ready_tls``: the client context to probe a node serving DICOM TLS with; ``new_session``: the node
        and its workers in a process group of their own (``os.killpg`` reaches them all, as a terminal would)."""
        self.data_dir = data_dir
        self._ready_tls = ready_tls
        self.port = port or free_port()
        self.log_path = data_dir.parent / f"node-{self.port}-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORTHO_NODE_")}
        # One receiving process unless a test asks for more (tests/reliability runs 1 and 2).
        env.update({"ORTHO_NODE_LOGGING_LEVEL": log_level, "ORTHO_NODE_STORAGE_MIN_FREE_MB": "0",
                    "ORTHO_NODE_DICOM_WORKERS": "1"})
        env.update(extra_env or {})
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ortho_node.app.cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(data_dir)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=new_session,
        )
        self.remote = RemoteNode("ORTHODIFF", "127.0.0.1", self.port)
        try:
            self._wait_ready()
        except BaseException:  # never leave a node serving behind a failed test
            self.process.kill()
            self.process.wait(timeout=30)
            self._log.close()
            raise

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}: {self.log()[-2000:]}")
            if echo_peer(self.remote, calling_ae="PROBE", timeout=2, ssl_context=self._ready_tls).status == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("node did not become ready")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self._log.close()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")
