"""``ortho-node`` command line: the parser made of every command group's module, and ``main(argv=None)``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ortho_node import __version__
from ortho_node.app.checks import StartupError
from ortho_node.app.cli import (admin, api_tokens, audit, cluster, console, dicom, doctor, model_registry,
                                 model_tools, retention, serving)
from ortho_node.app.logs import configure_logging
from ortho_node.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ortho-node", description="OrthoDiffusion DICOM node")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (serving, dicom, admin, cluster, retention, audit, console, api_tokens, model_tools, model_registry,
                  doctor):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Find the command's parser from the tokens (not by parsing: ``--help`` would exit before the deferred
    # module added its flags, and the help would list none of them).
    subparser = _find_subparser(parser, argv)
    module = subparser.get_default("argument_module")
    if module:
        import importlib

        importlib.import_module(module).add_arguments(subparser)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        configure_logging("INFO")
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:  # no node database, a port in use, a folder not writable: the line says which
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _find_subparser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    current = parser
    for token in argv:
        actions = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or token not in actions[0].choices:
            break
        current = actions[0].choices[token]
    return current


if __name__ == "__main__":
    sys.exit(main())
