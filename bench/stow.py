"""STOW-RS receive benchmark (issue 24): instances/s into our node by STOW-RS, into the same node by C-STORE, and
into Orthanc's DICOMweb plugin by STOW-RS, with one and with four concurrent clients, in the same run.

Clients are C programs on every side, so the receivers are measured and not a Python client: ``curl`` (one
process per client, keep-alive, one multipart/related request per ``--per-request`` instances, bodies built
before the clock starts) for STOW-RS, dcmtk ``storescu`` (one association per client) for C-STORE. Every run
sends instances with fresh UIDs (nothing is a duplicate) of ``--rows`` x ``--rows`` 16-bit MR images, and checks
that every request answered 200 (every C-STORE success). Receivers are started once and used for every run: our
node as ``ortho-node serve`` (bundled settings, ``model.enabled = false``, fsync on, SQLite) with STOW-RS on a
listener of its own as ``deploy/node.example.toml`` serves it (``--console-port``: on the console's port) and a
``stow`` API token; Orthanc with its DICOMweb plugin (its storage fsynced as by default).

Prints the median and range over ``--repeat`` runs, and our STOW-RS rate over Orthanc's (goal >= 1.0x).

    python3 bench/stow.py [--instances 60] [--per-request 10] [--rows 256] [--repeat 3] [--clients 1,4]
                          [--workers N | --console-port]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom.uid import generate_uid  # noqa: E402

from listeners.console.passwords import hash_password  # noqa: E402
from tests.dicom_factory import mr_dataset  # noqa: E402
from tests.node_process import NodeProcess, free_port  # noqa: E402
from tests.reports.orthanc import Orthanc  # noqa: E402


def instances(count: int, rows: int) -> list[bytes]:
    """``count`` PS3.10 files of one new study, ``rows`` x ``rows`` pixels each."""
    study, series = generate_uid(), generate_uid()
    files = []
    for index in range(count):
        ds = mr_dataset(study_uid=study, series_uid=series, rows=rows, columns=rows, seed=index,
                        instance_number=index + 1)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def bodies(files: list[bytes], per_request: int, folder: Path) -> list[tuple[Path, str]]:
    """multipart/related bodies of ``per_request`` files each, written to ``folder``: (path, Content-Type)."""
    made = []
    for start in range(0, len(files), per_request):
        boundary = f"bench-{uuid.uuid4().hex}"
        body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n"
                        for f in files[start:start + per_request]) + f"--{boundary}--\r\n".encode()
        path = folder / f"body-{start}.bin"
        path.write_bytes(body)
        made.append((path, f'multipart/related; type="application/dicom"; boundary="{boundary}"'))
    return made


def curl_command(url: str, requests: list[tuple[Path, str]], headers: list[str]) -> list[str]:
    """One curl process sending ``requests`` one after the other on one kept-alive connection. ``Expect:`` (empty)
    turns curl's ``Expect: 100-continue`` off: a server that does not answer it (Orthanc's) costs 1 s a request."""
    command = ["curl"]
    for index, (path, content_type) in enumerate(requests):
        if index:
            command.append("--next")  # options apply per request after --next: each gets its own
        command += ["-s", "-o", "/dev/null", "-w", "%{http_code}\\n", "-X", "POST", "--data-binary", f"@{path}", "-H", f"Content-Type: {content_type}",
                    "-H", "Accept: application/dicom+json", "-H", "Expect:", *sum((["-H", h] for h in headers), []), url]
    return command


def run_stow(url: str, headers: list[str], files: list[bytes], clients: int, per_request: int,
             folder: Path) -> float:
    """Seconds for ``clients`` curl processes to store ``files``; raises unless every answer is 200."""
    made = bodies(files, per_request, folder)
    shares = [made[i::clients] for i in range(clients)]
    start = time.perf_counter()
    processes = [subprocess.Popen(curl_command(url, share, headers), stdout=subprocess.PIPE, text=True)
                 for share in shares if share]
    codes = [code for process in processes for code in process.communicate()[0].split()]
    elapsed = time.perf_counter() - start
    if set(codes) != {"200"} or len(codes) != len(made):
        raise RuntimeError(f"STOW-RS to {url}: answers {sorted(set(codes))}, {len(codes)} of {len(made)}")
    return elapsed


def run_cstore(port: int, files: list[bytes], clients: int, folder: Path) -> float:
    """Seconds for ``clients`` storescu processes (one association each) to store ``files``."""
    shares = []
    for client in range(clients):
        share = folder / f"client-{client}"
        share.mkdir()
        for index, payload in enumerate(files[client::clients]):
            (share / f"{index}.dcm").write_bytes(payload)
        shares.append(share)
    start = time.perf_counter()
    # TCP_NODELAY as bench/ingest.py sets it: without it storescu's last short segment of an instance can wait
    # for the receiver's delayed ACK, which made this row bimodal in earlier runs (about 40 or 117 instances/s).
    env = {**os.environ, "TCP_NODELAY": "1"}
    processes = [subprocess.Popen(["/usr/bin/storescu", "-aec", "ORTHODIFF", "127.0.0.1", str(port), "+sd",
                                   str(share)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                 for share in shares]
    outputs = [process.communicate()[0] for process in processes]
    elapsed = time.perf_counter() - start
    if any(process.returncode for process in processes) or any("E: " in out for out in outputs):
        raise RuntimeError("storescu failed: " + " | ".join(o.strip()[-300:] for o in outputs if o.strip()))
    return elapsed


def start_node(folder: Path, workers: int = 0, *, console_port_only: bool = False) -> tuple[NodeProcess, str, str]:
    """Our node with STOW-RS on a DICOMweb listener of its own served by ``workers`` processes (0: the node's
    default, two on two cores or more), or on its console port (one process); (process, STOW-RS URL, token)."""
    console_port, port = free_port(), free_port()
    user = f"admin:{hash_password(uuid.uuid4().hex)}"  # the console needs a user; the bench signs in by token
    env = {"ORTHO_NODE_MODEL_ENABLED": "false", "ORTHO_NODE_CONSOLE_ENABLED": "true",
           "ORTHO_NODE_CONSOLE_PORT": str(console_port), "ORTHO_NODE_CONSOLE_USERS": user,
           "ORTHO_NODE_DICOMWEB_MAX_REQUEST_MB": "4096"}
    if not console_port_only:
        env.update({"ORTHO_NODE_DICOMWEB_OWN_LISTENER": "true", "ORTHO_NODE_DICOMWEB_PORT": str(port),
                    "ORTHO_NODE_DICOMWEB_WORKERS": str(workers)})
    node = NodeProcess(folder / "node", log_level="WARNING", extra_env=env)
    web_port = console_port if console_port_only else port
    created = subprocess.run([sys.executable, "-m", "ortho_node.app.cli.main", "api-token", "create", "bench",
                              "--role", "stow", "--data-dir", str(folder / "node")], capture_output=True, text=True,
                             check=True, env={k: v for k, v in os.environ.items() if not k.startswith("ORTHO_NODE_")})
    _wait_listening(web_port)  # the web listeners start after the DICOM port
    return node, f"http://127.0.0.1:{web_port}/dicomweb/studies", created.stdout.strip()


def _wait_listening(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            time.sleep(0.2)


def summary(rates: list[float]) -> str:
    return f"{statistics.median(rates):8.1f} inst/s (range {min(rates):.1f}-{max(rates):.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=60)
    parser.add_argument("--per-request", type=int, default=10)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--workers", type=int, default=0,
                        help="dicomweb.workers of the node's own DICOMweb listener (0: the node's default)")
    parser.add_argument("--console-port", action="store_true",
                        help="STOW-RS on the console's port instead (the node's own process)")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-stow-") as tmp:
        folder = Path(tmp)
        node, node_url, token = start_node(folder, args.workers, console_port_only=args.console_port)
        orthanc = Orthanc(folder / "orthanc", dicomweb=True)
        rates: dict[tuple[str, int], list[float]] = {}
        try:
            for run in range(args.repeat):
                for count in clients:
                    targets = {
                        "node STOW-RS": lambda files, where: run_stow(node_url, [f"Authorization: Bearer {token}"],
                                                                      files, count, args.per_request, where),
                        "node C-STORE": lambda files, where: run_cstore(node.port, files, count, where),
                        "Orthanc STOW-RS": lambda files, where: run_stow(f"{orthanc.url}/dicom-web/studies", [],
                                                                         files, count, args.per_request, where)}
                    for name, send in targets.items():
                        where = folder / f"run-{run}-{count}-{name.replace(' ', '-')}"
                        where.mkdir()
                        files = instances(args.instances, args.rows)
                        rates.setdefault((name, count), []).append(args.instances / send(files, where))
        finally:
            node.stop()
            orthanc.remove()
    size_kb = args.rows * args.rows * 2 / 1024
    print(f"{args.instances} instances of {size_kb:.0f} KiB, {args.per_request} per STOW-RS request, "
          f"{args.repeat} runs (median, range); node STOW-RS "
          f"{'on the console port' if args.console_port else f'on its own listener, dicomweb.workers = {args.workers}'}")
    for (name, count), values in rates.items():
        print(f"  {name:16} {count} client{'s' if count > 1 else ' '}: {summary(values)}")
    for count in clients:
        ours, theirs = rates[("node STOW-RS", count)], rates[("Orthanc STOW-RS", count)]
        cstore = rates[("node C-STORE", count)]
        print(f"  {count} client{'s' if count > 1 else ' '}: node STOW-RS / Orthanc STOW-RS = "
              f"{statistics.median(ours) / statistics.median(theirs):.2f}x (goal >= 1.0x); "
              f"node STOW-RS / node C-STORE = {statistics.median(ours) / statistics.median(cstore):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
