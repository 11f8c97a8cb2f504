"""``ortho-node`` command line: a thin layer over the library (``main(argv=None)`` for tests)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ortho_node import __version__
from ortho_node.config import ConfigError, Settings, describe, load_settings
from ortho_node.app.logs import configure_logging

log = logging.getLogger("ortho_node")


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $ORTHO_NODE_CONFIG)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ortho-node", description="OrthoDiffusion DICOM node")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the DICOM node")
    _add_config_flag(serve)
    serve.add_argument("--aet", help="our AE title (dicom.ae_title)")
    serve.add_argument("--host", help="listen address (dicom.host)")
    serve.add_argument("--port", type=int, help="listen port (dicom.port)")
    serve.add_argument("--data-dir", help="data folder (storage.data_dir)")
    serve.add_argument("--destination", action="append", metavar="NAME=AE@HOST:PORT",
                       help="deliver results to this node (repeatable; adds to or replaces [[destinations]])")
    serve.set_defaults(handler=cmd_serve)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply Alembic migrations up to the newest schema")
    _add_config_flag(upgrade)
    upgrade.set_defaults(handler=cmd_db_upgrade)

    config = sub.add_parser("config", help="configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the effective settings")
    _add_config_flag(show)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_config_show)

    echo = sub.add_parser("echo", help="C-ECHO a remote node")
    echo.add_argument("remote", metavar="AE@HOST:PORT")
    echo.add_argument("--aet", default="ORTHODIFF", help="our calling AE title")
    echo.set_defaults(handler=cmd_echo)

    send = sub.add_parser("send", help="C-STORE files or folders to a remote node")
    send.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    send.add_argument("--to", required=True, metavar="AE@HOST:PORT")
    send.add_argument("--aet", default="ORTHODIFF", help="our calling AE title")
    send.set_defaults(handler=cmd_send)

    studies = sub.add_parser("studies", help="list received studies")
    _add_config_flag(studies)
    studies.add_argument("--json", action="store_true")
    studies.set_defaults(handler=cmd_studies)

    jobs = sub.add_parser("jobs", help="list processing jobs (newest first)")
    _add_config_flag(jobs)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(handler=cmd_jobs)

    reprocess = sub.add_parser("reprocess", help="queue a study for processing again")
    _add_config_flag(reprocess)
    reprocess.add_argument("study_uid", metavar="STUDY_UID")
    reprocess.set_defaults(handler=cmd_reprocess)

    deliveries = sub.add_parser("deliveries", help="list the result delivery queue")
    _add_config_flag(deliveries)
    deliveries.add_argument("--json", action="store_true")
    deliveries.set_defaults(handler=cmd_deliveries)

    resend = sub.add_parser("resend", help="queue a study's results for delivery again")
    _add_config_flag(resend)
    resend.add_argument("study_uid", metavar="STUDY_UID")
    resend.add_argument("--to", metavar="NAME", help="only this destination (default: every configured one and "
                                                     "every one the study was queued for)")
    resend.set_defaults(handler=cmd_resend)

    _add_audit_commands(sub)
    _add_console_commands(sub)
    _add_optional_commands(sub)
    return parser


def _add_audit_commands(sub) -> None:
    """``ortho-node audit``: what happened to studies, results and deliveries (shared with the web console)."""
    audit = sub.add_parser("audit", help="admin audit views: studies, a study's timeline, deliveries, failures")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    views = {"studies": "processed studies with joint, status, findings, turnaround and delivery state",
             "deliveries": "result deliveries (status: pending, delivered, failed)",
             "failures": "failed steps: job retries and failures, skipped studies, flagged deliveries",
             "summary": "per-day volumes, failures and turnaround percentiles"}
    for name, help_text in views.items():
        view = audit_sub.add_parser(name, help=help_text)
        _add_config_flag(view)
        _add_audit_output_flags(view)
        if name == "summary":
            view.add_argument("--days", type=int, default=14, help="days up to today (default 14)")
            continue
        view.add_argument("--since", type=_iso_day, metavar="YYYY-MM-DD", help="from this day (UTC)")
        view.add_argument("--until", type=_iso_day, metavar="YYYY-MM-DD", help="up to this day (UTC)")
        view.add_argument("--status", help="studies: " + ", ".join(_audit_statuses()) +
                          "; deliveries: pending, delivered, failed; failures: a step name")
        view.add_argument("--search", help="part of a Study Instance UID (or study description)")
        view.add_argument("--limit", type=int, default=500)
        if name == "studies":
            view.add_argument("--joint", choices=("knee", "ankle", "shoulder", "unknown"))
            view.add_argument("--ae", dest="calling_ae", metavar="AE", help="sending (calling) AE title")
    timeline = audit_sub.add_parser("timeline", help="a study's timeline, results and deliveries")
    _add_config_flag(timeline)
    _add_audit_output_flags(timeline)
    timeline.add_argument("study_uid", metavar="STUDY_UID")
    audit.set_defaults(handler=cmd_audit)


def _add_audit_output_flags(parser: argparse.ArgumentParser) -> None:
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON on stdout")
    output.add_argument("--csv", action="store_true", help="CSV on stdout")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of stdout")


def _audit_statuses() -> tuple[str, ...]:
    from ortho_node.audit.views import STATUSES

    return STATUSES


def _iso_day(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def cmd_audit(args: argparse.Namespace) -> int:
    from ortho_node.app.cli import audit as audit_cli

    return audit_cli.run(args, _session_factory(_settings(args)))


def _add_console_commands(sub) -> None:
    console = sub.add_parser("console", help="admin web console")
    console_sub = console.add_subparsers(dest="console_command", required=True)
    hash_password = console_sub.add_parser(
        "hash-password", help="print a console.users entry NAME:HASH for a password read from stdin or a prompt")
    hash_password.add_argument("user", metavar="NAME")
    hash_password.set_defaults(handler=cmd_console_hash_password)


def cmd_console_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from listeners.console.passwords import hash_password, valid_user_name

    if not valid_user_name(args.user):
        print("error: user names are 1-64 letters, digits, '.', '_' or '-'", file=sys.stderr)
        return 2
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("error: the password must have at least 8 characters", file=sys.stderr)
        return 2
    print(f"{args.user}:{hash_password(password)}")
    return 0


def _add_optional_commands(sub) -> None:
    """Commands whose modules import torch or scipy: their imports happen only when they run."""
    synth = sub.add_parser("synth", help="generate synthetic MSK MRI studies with ground truth")
    synth.set_defaults(handler=_deferred("ortho_node.app.cli.synth"), argument_module="ortho_node.app.cli.synth")
    train = sub.add_parser("train", help="train models")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    pretrain = train_sub.add_parser("pretrain", help="self-supervised diffusion pretraining of a backbone")
    pretrain.set_defaults(handler=_deferred("ortho_node.training.pretrain"), argument_module="ortho_node.training.pretrain")
    finetune = train_sub.add_parser("finetune", help="train a task's heads (segmentation or diagnosis)")
    finetune.set_defaults(handler=_deferred("ortho_node.training.finetune"), argument_module="ortho_node.training.finetune")
    bundle = train_sub.add_parser("bundle", help="train the bundled model on synthetic studies, end to end")
    bundle.set_defaults(handler=_deferred("ortho_node.training.bundle"), argument_module="ortho_node.training.bundle")
    infer = sub.add_parser("infer", help="run the model on a folder of DICOM files (NIfTI masks + findings JSON)")
    infer.set_defaults(handler=cmd_infer, argument_module="ortho_node.inference.offline")


def _deferred(module_name: str):
    def handler(args: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module_name).run(args)

    return handler


def _settings(args: argparse.Namespace, **overrides) -> Settings:
    return load_settings(getattr(args, "config", None), overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from ortho_node.app.node import Node, load_predictor

    settings = _settings(args, **{"dicom.ae_title": args.aet, "dicom.host": args.host, "dicom.port": args.port,
                                  "storage.data_dir": args.data_dir, "destinations": args.destination})
    configure_logging(settings.logging.level, settings.logging.format)
    # Loaded once, before the Storage SCP accepts anything; every study reuses it.
    node = Node(settings, predictor=load_predictor(settings))
    node.prepare()
    node.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    node.stop()
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from ortho_node.inference import offline

    settings = _settings(args)

    def write_dicom_results(out: Path, prediction) -> None:
        from reports.results import build_results, write_result_objects

        write_result_objects(build_results(prediction, settings).datasets, out)

    return offline.run(args, write_dicom_results=write_dicom_results)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from ortho_node.db import migrations
    from ortho_node.db.engine import make_engine

    settings = _settings(args)
    engine = make_engine(settings.database_url)
    migrations.upgrade(engine)
    print(f"database at revision {migrations.current_revision(engine)}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.json:
        print(json.dumps(settings.to_dict(), indent=2))
        return 0
    for key, value, doc in describe(settings):
        print(f"{key} = {json.dumps(value)}    # {doc}")
    print(f"# effective database URL: {_redact_url(settings.database_url)}")
    return 0


def _redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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


def cmd_studies(args: argparse.Namespace) -> int:
    from ortho_node.audit.queries import list_studies

    studies = list_studies(_session_factory(_settings(args)))
    if args.json:
        print(json.dumps(studies, indent=2, default=str))
        return 0
    for study in studies:
        print(f"{study['study_instance_uid']}  {study['instance_count']} instances in "
              f"{len(study['series'])} series, last received {study['last_received_at']}")
        assembly, job = study["assembly"], study["job"]
        if job is not None:
            print(f"    job {job['id']} {job['state']}: {job['reason']}")
        if assembly is not None:
            planes = ", ".join(f"{p} <- {v['series_instance_uid']} ({v['reason']})"
                               for p, v in assembly["planes"].items())
            print(f"    {assembly['joint']} {assembly['laterality']} {assembly['outcome']}: {planes or 'no planes'}"
                  f"{'; missing ' + ', '.join(assembly['missing_planes']) if assembly['missing_planes'] else ''}"
                  f"{'; ' + assembly['skip_reason'] if assembly['skip_reason'] else ''}")
        for series in study["series"]:
            print(f"    {series['series_instance_uid']}  {series['modality'] or '-':3} "
                  f"{series['instance_count']:5d}  {series['series_description'] or ''}")
    return 0


def _session_factory(settings: Settings):
    from ortho_node.db.engine import make_engine, make_session_factory

    return make_session_factory(make_engine(settings.database_url))


def cmd_jobs(args: argparse.Namespace) -> int:
    from ortho_node.audit.queries import list_jobs

    jobs = list_jobs(_session_factory(_settings(args)))
    if args.json:
        print(json.dumps(jobs, indent=2, default=str))
        return 0
    for job in jobs:
        error = f"  last error: {job['last_error']}" if job["last_error"] else ""
        print(f"job {job['id']:5d} {job['state']:10} attempts {job['attempts']}  {job['study_instance_uid']}  "
              f"{job['reason']}{error}")
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    """Queue a job in the database; the serving node picks it up at its next poll."""
    from ortho_node.audit.trail import AuditKind
    from ortho_node.scheduling.jobs import JobQueue, RetryPolicy
    from ortho_node.scheduling.timers import SystemTime

    settings = _settings(args)
    scheduling = settings.scheduling
    queue = JobQueue(_session_factory(settings), SystemTime(),
                     RetryPolicy(scheduling.max_attempts, scheduling.retry_base, scheduling.retry_cap))
    try:
        job_id = queue.enqueue(args.study_uid, "reprocess requested", force=True, kind=AuditKind.JOB_QUEUED)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"job {job_id} queued for study {args.study_uid}")
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    from ortho_node.delivery.queue import list_deliveries

    items = list_deliveries(_session_factory(_settings(args)))
    if args.json:
        print(json.dumps(items, indent=2, default=str))
        return 0
    for item in items:
        status = "" if item["last_status"] is None else f" 0x{item['last_status']:04X}"
        error = f"  {item['last_error']}" if item["last_error"] and item["state"] != "delivered" else ""
        when = item["delivered_at"] if item["state"] == "delivered" else f"next {item['next_attempt_at']}"
        print(f"{item['study_instance_uid']}  {item['destination']:12} {item['kind']:7} {item['state']:9} "
              f"attempts {item['attempts']}{status}  {when}{error}")
    return 0


def cmd_resend(args: argparse.Namespace) -> int:
    """Reset the queue rows in the database; the serving node sends them at its next poll."""
    from ortho_node.config import OBJECT_KINDS
    from ortho_node.delivery.worker import DeliveryService

    settings = _settings(args)
    queue = DeliveryService(settings, _session_factory(settings)).queue
    configured = {dest.name: dest.kinds for dest in settings.destinations}
    queued_for = queue.destinations_of(args.study_uid)
    targets = {**{name: list(OBJECT_KINDS) for name in queued_for}, **configured}
    if args.to:
        if args.to not in targets:
            print(f"error: destination {args.to!r} is neither configured nor in the queue for this study",
                  file=sys.stderr)
            return 2
        targets = {args.to: targets[args.to]}
    count = queue.resend(args.study_uid, targets) if queued_for else 0
    if not count:
        print(f"error: no result objects of study {args.study_uid} in the delivery queue", file=sys.stderr)
        return 1
    print(f"{count} result objects queued again for {', '.join(sorted(targets))}")
    return 0


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
