"""``ortho-node echo`` and ``send``: C-ECHO and C-STORE to another DICOM node from the shell, with messages
like dcmtk's (``echoscu``, ``storescu``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pynetdicom is imported only by the commands that talk DICOM
    from ortho_node.delivery.scu import SendResult

#: Our calling AE title from the shell: not the node's own (ORTHODIFF), so that a peer's log and the node's
#: audit tell an admin's test apart from the node's deliveries.
DEFAULT_CALLING_AE = "ORTHOSCU"


def register(sub) -> None:
    echo = sub.add_parser("echo", help="C-ECHO a remote node")
    echo.add_argument("remote", metavar="AE@HOST:PORT")
    echo.add_argument("--aet", default=DEFAULT_CALLING_AE, help=f"our calling AE title (default {DEFAULT_CALLING_AE})")
    echo.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer (default 30)")
    echo.set_defaults(handler=cmd_echo)

    send = sub.add_parser("send", help="C-STORE files or folders to a remote node")
    send.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    send.add_argument("--to", required=True, metavar="AE@HOST:PORT")
    send.add_argument("--aet", default=DEFAULT_CALLING_AE, help=f"our calling AE title (default {DEFAULT_CALLING_AE})")
    send.set_defaults(handler=cmd_send)


@contextlib.contextmanager
def _own_messages_only() -> Iterator[None]:
    """This command prints every failure itself, once; pynetdicom's and the SCU's log lines would repeat it."""
    loggers = [logging.getLogger(name) for name in ("pynetdicom", "ortho_node.delivery.scu")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _remote(text: str):
    """``AE@HOST:PORT`` as a RemoteNode; None (the error printed) when it does not parse."""
    from ortho_node.delivery.scu import RemoteNode

    try:
        return RemoteNode.parse(text)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_echo(args: argparse.Namespace) -> int:
    from ortho_node.delivery.scu import echo_peer

    remote = _remote(args.remote)
    if remote is None:
        return 2
    with _own_messages_only():
        result = echo_peer(remote, calling_ae=args.aet, timeout=args.timeout)
    if result.status is None:
        reason = f"association rejected: {result.rejection}" if result.rejection else result.reason
        print(f"C-ECHO to {remote} as {args.aet}: {reason}", file=sys.stderr)
        return 1
    print(f"C-ECHO to {remote} as {args.aet}: status 0x{result.status:04X}")
    return 0 if result.status == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ortho_node.delivery.scu import collect_files, send_files

    remote = _remote(args.to)
    if remote is None:
        return 2
    files = collect_files(args.paths)
    if not files:
        print("no files to send", file=sys.stderr)
        return 1
    with _own_messages_only(), tqdm(total=len(files), unit="file", disable=not sys.stderr.isatty()) as bar:
        results = send_files(remote, files, calling_ae=args.aet, progress=lambda _r: bar.update())
    failures = [r for r in results if not r.ok]
    for failure in failures:
        print(f"FAILED {failure.path}: {why_not_sent(failure)}", file=sys.stderr)
    print(f"sent {len(results) - len(failures)} of {len(results)} to {remote} as {args.aet}")
    return 1 if failures else 0


def why_not_sent(result: SendResult) -> str:
    """One phrase per failure, the way storescu words it: a file we skipped says so; a refused association
    gives the peer's reason; a status gives its code and meaning."""
    from ortho_node.delivery.scu import Failure

    if result.status is not None:
        return f"status 0x{result.status:04X} {result.reason}"
    if result.failure is Failure.UNREADABLE:
        return f"{result.reason} (not sent)"
    if result.rejection is not None:
        return f"association rejected: {result.rejection}"
    return result.reason
