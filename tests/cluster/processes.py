"""``ortho-node serve --role ...`` subprocesses sharing one PostgreSQL database and one data folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from ortho_node.delivery.scu import RemoteNode, echo
from tests.node_process import free_port

#: Short timers so a cluster test takes a minute, not ten: a lease of 3 s (1 s heartbeats, 3 missed).
FAST_CLUSTER = {
    "ORTHO_NODE_SCHEDULING_QUIET_PERIOD": "1.0",
    "ORTHO_NODE_SCHEDULING_SETTLE_TIME": "0.5",
    "ORTHO_NODE_SCHEDULING_LONG_TIMEOUT": "4.0",
    "ORTHO_NODE_SCHEDULING_POLL_INTERVAL": "1.0",
    "ORTHO_NODE_SCHEDULING_CONCURRENCY": "1",
    "ORTHO_NODE_DICOM_WORKERS": "1",  # several nodes share 2 cores; tests/reliability covers two workers
    "ORTHO_NODE_DELIVERY_POLL_INTERVAL": "1.0",
    "ORTHO_NODE_DELIVERY_BATCH_SIZE": "4",
    "ORTHO_NODE_CLUSTER_HEARTBEAT_INTERVAL": "1.0",
    "ORTHO_NODE_CLUSTER_MISSED_HEARTBEATS": "3",
    "ORTHO_NODE_STORAGE_FSYNC": "false",  # throwaway data
    "ORTHO_NODE_STORAGE_MIN_FREE_MB": "0",
    "ORTHO_NODE_MODEL_DEVICE": "cpu",
    "ORTHO_NODE_MODEL_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class ServeProcess:
    """One ``ortho-node serve --role ROLE`` with node id ``node_id``; ``start`` waits until it serves."""

    def __init__(self, node_id: str, role: str, data_dir: Path, log_dir: Path, env: Mapping[str, str]) -> None:
        self.node_id, self.role = node_id, role
        self.port = free_port() if role != "process" else 0
        self.log_path = log_dir / f"{node_id}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("ORTHO_NODE_")}
        self._env = {**base, **FAST_CLUSTER, **env, "ORTHO_NODE_CLUSTER_NODE_ID": node_id}
        self._args = [sys.executable, "-m", "ortho_node.app.cli.main", "serve", "--role", role, "--host", "127.0.0.1",
                      "--port", str(self.port), "--data-dir", str(data_dir)]
        self.process: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self._args, stdout=self._log, stderr=subprocess.STDOUT, env=self._env)
        return self

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        started = f"node {self.node_id} started: role {self.role}"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.node_id} exited with {self.process.returncode}: {self.log()[-2000:]}")
            if started in self.log():
                if self.role == "process" or echo(RemoteNode("ORTHODIFF", "127.0.0.1", self.port),
                                                  calling_ae="PROBE", timeout=2) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.node_id} did not start: {self.log()[-2000:]}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
