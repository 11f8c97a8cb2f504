"""``ortho-node model list|import|activate|rollback|shadow|agreement``: the node's own models
(``ortho_node.model.registry``) and the shadow model's agreement with the active one."""

from __future__ import annotations

import argparse
import json
import sys

from ortho_node.app.checks import StartupError
from ortho_node.app.cli.context import add_node_flags, session_factory, settings_of


def register(sub) -> None:
    model = sub.add_parser("model", help="the models this node can serve: import, activate, roll back")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    listing = _command(model_sub, "list", "imported models, the active one, and every activation", cmd_list)
    listing.add_argument("--json", action="store_true")
    imported = _command(model_sub, "import", "verify a task model folder and copy it into the node", cmd_import)
    imported.add_argument("folder", metavar="FOLDER", help="model_card.json + model.safetensors (train finetune --out)")
    _by(imported)
    activate = _command(model_sub, "activate", "serve this model (a running node takes it at its next study)",
                        cmd_activate)
    activate.add_argument("model", metavar="MODEL", help="an id from `model list`, NAME@VERSION, or bundled")
    _by(activate)
    _by(_command(model_sub, "rollback", "serve the model the last activation replaced again", cmd_rollback))
    shadow = _command(model_sub, "shadow", "run a candidate model beside the active one (stored, never delivered)",
                      cmd_shadow)
    choice = shadow.add_mutually_exclusive_group(required=True)
    choice.add_argument("model", nargs="?", metavar="MODEL", help="an imported model's id or NAME@VERSION")
    choice.add_argument("--clear", action="store_true", help="stop running a shadow model")
    _by(shadow)
    agreement = _command(model_sub, "agreement", "how the shadow model's results agree with the active model's",
                         cmd_agreement)
    agreement.add_argument("--json", action="store_true")


def _command(sub, name: str, help_text: str, handler) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text)
    add_node_flags(parser)
    parser.set_defaults(handler=handler)
    return parser


def _by(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", metavar="NAME", help="who makes the change (default: the operating-system user)")


def _registry(args: argparse.Namespace):
    from ortho_node.model.registry import ModelRegistry

    settings = settings_of(args)
    registry = ModelRegistry.for_settings(settings, session_factory(settings))
    if not registry.installed():
        raise StartupError("the node database has no model registry yet: run `ortho-node db upgrade`")
    return registry


def _refused(handler):
    """Run ``handler``; a registry refusal is one ``error:`` line and exit 2."""
    from ortho_node.model.registry import RegistryError

    try:
        return handler()
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    active, models, history = registry.active(), registry.models(), registry.history()
    if args.json:
        shadow = registry.shadow()
        print(json.dumps({"pinned": None if registry.pinned is None else str(registry.pinned),
                          "active": _model_json(active),
                          "shadow": None if shadow is None else _model_json(shadow),
                          "models": [_model_json(m) | {"active": m.id == active.id} for m in models],
                          "history": [{"id": a.id, "action": a.action, "at": a.at, "by": a.by,
                                       "model": _model_json(a.model)} for a in history]}, indent=2))
        return 0
    if registry.pinned is not None:
        print(f"model.path pins {registry.pinned}: the node serves it, whatever is active here")
    for model in models:
        mark = "*" if model.id == active.id else " "
        imported = f"  imported {model.imported_at} by {model.imported_by}" if model.id is not None else ""
        print(f"{mark} {model.label}  sha256 {model.weights_sha256[:12]}{imported}")
    shadow = registry.shadow()
    if shadow is not None:
        print(f"  shadow: {shadow.label} (results stored, never delivered; `ortho-node model agreement`)")
    for activation in history:
        print(f"  {activation.at}  {activation.action:8}  {activation.model.label}  by {activation.by}")
    return 0


def _model_json(model) -> dict:
    return {"id": model.id, "name": model.name, "version": model.version, "folder": str(model.folder),
            "weights_sha256": model.weights_sha256, "imported_by": model.imported_by or None,
            "imported_at": model.imported_at or None}


def cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ortho_node.model.registry import who

    def run() -> int:
        entry = _registry(args).import_folder(Path(args.folder), by=who(args.by))
        print(f"imported model #{entry.id} {entry.name} {entry.version} into {entry.folder}; "
              f"`ortho-node model activate {entry.id}` serves it")
        return 0

    return _refused(run)


def cmd_activate(args: argparse.Namespace) -> int:
    from ortho_node.model.registry import who

    def run() -> int:
        entry = _registry(args).activate(args.model, by=who(args.by))
        print(f"model {entry.label} is active: a running node takes it at its next study")
        return 0

    return _refused(run)


def cmd_rollback(args: argparse.Namespace) -> int:
    from ortho_node.model.registry import who

    def run() -> int:
        entry = _registry(args).rollback(by=who(args.by))
        print(f"rolled back: model {entry.label} is active again; a running node takes it at its next study")
        return 0

    return _refused(run)


def cmd_shadow(args: argparse.Namespace) -> int:
    from ortho_node.model.registry import who

    def run() -> int:
        entry = _registry(args).set_shadow(None if args.clear else args.model, by=who(args.by))
        if entry is None:
            print("no shadow model: a running node stops running one at its next study")
        else:
            print(f"shadow model {entry.label}: a running node runs it beside the active model from its next "
                  "study; its results are stored, never delivered")
        return 0

    return _refused(run)


def cmd_agreement(args: argparse.Namespace) -> int:
    """Per pair of shadow and active model versions: Dice per structure, findings that differ, counts."""
    from ortho_node.inference.agreement import agreement_reports

    _registry(args)  # the database has the registry's tables (and so the shadow results')
    with session_factory(settings_of(args))() as session:
        reports = agreement_reports(session)
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0
    if not reports:
        print("no shadow results yet (`ortho-node model shadow MODEL` chooses a candidate)")
    for report in reports:
        _print_agreement(report)
    return 0


def _print_agreement(report: dict) -> None:
    print(f"shadow {report['shadow_model']} {report['shadow_version']} beside {report['active_version']}: "
          f"{report['studies']} studies")
    if report["structures"]:
        print(f"  {'structure':30} {'Dice mean':>9} {'pooled':>7} {'studies':>7}")
    for name, s in report["structures"].items():
        mean = "-" if s["dice_mean"] is None else f"{s['dice_mean']:.3f}"
        pooled = "-" if s["dice_pooled"] is None else f"{s['dice_pooled']:.3f}"
        print(f"  {name:30} {mean:>9} {pooled:>7} {s['studies']:>7}")
    differ = [f"{label} {f['differ']} of {f['studies']}" for label, f in report["findings"].items() if f["differ"]]
    print(f"  findings that differ: {', '.join(differ) or 'none'}")
    if report["differing_results"]:
        print(f"  shadow results with a differing finding: {', '.join(map(str, report['differing_results']))}")
