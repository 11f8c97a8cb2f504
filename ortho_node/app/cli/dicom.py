"""``ortho-node echo`` and ``send``: C-ECHO and C-STORE to another DICOM node from the shell."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> None:
    echo = sub.add_parser("echo", help="C-ECHO a remote node")
    echo.add_argument("remote", metavar="AE@HOST:PORT")
    echo.add_argument("--aet", default="ORTHODIFF", help="our calling AE title")
    echo.set_defaults(handler=cmd_echo)

    send = sub.add_parser("send", help="C-STORE files or folders to a remote node")
    send.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    send.add_argument("--to", required=True, metavar="AE@HOST:PORT")
    send.add_argument("--aet", default="ORTHODIFF", help="our calling AE title")
    send.set_defaults(handler=cmd_send)


def cmd_echo(args: argparse.Namespace) -> int:
    from ortho_node.delivery.scu import RemoteNode, echo

    try:
        remote = RemoteNode.parse(args.remote)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = echo(remote, calling_ae=args.aet)
    if status is None:
        print(f"C-ECHO to {remote}: no association or no response", file=sys.stderr)
        return 1
    print(f"C-ECHO to {remote}: status 0x{status:04X}")
    return 0 if status == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ortho_node.delivery.scu import RemoteNode, collect_files, send_files

    try:
        remote = RemoteNode.parse(args.to)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = collect_files(args.paths)
    if not files:
        print("no files to send", file=sys.stderr)
        return 1
    with tqdm(total=len(files), unit="file", disable=not sys.stderr.isatty()) as bar:
        results = send_files(remote, files, calling_ae=args.aet, progress=lambda _r: bar.update())
    failures = [r for r in results if not r.ok]
    for failure in failures:
        status = "no status" if failure.status is None else f"0x{failure.status:04X}"
        print(f"FAILED {failure.path}: {status} {failure.reason}", file=sys.stderr)
    print(f"sent {len(results) - len(failures)} of {len(results)} to {remote}")
    return 1 if failures else 0
