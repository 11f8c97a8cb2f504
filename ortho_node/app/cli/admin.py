"""``ortho-node studies``, ``jobs``, ``reprocess``, ``deliveries`` and ``resend``: the node's work queues."""

from __future__ import annotations

import argparse
import json
import sys

from ortho_node.app.cli.context import add_node_flags, session_factory, settings_of


def register(sub) -> None:
    _listing(sub, "studies", "list received studies", cmd_studies)
    _listing(sub, "jobs", "list processing jobs (newest first)", cmd_jobs)

    reprocess = sub.add_parser("reprocess", help="queue a study for processing again")
    add_node_flags(reprocess)
    reprocess.add_argument("study_uid", metavar="STUDY_UID")
    reprocess.set_defaults(handler=cmd_reprocess)

    _listing(sub, "deliveries", "list the result delivery queue", cmd_deliveries)

    resend = sub.add_parser("resend", help="queue a study's results for delivery again")
    add_node_flags(resend)
    resend.add_argument("study_uid", metavar="STUDY_UID")
    resend.add_argument("--to", metavar="NAME", help="only this destination (default: every configured one and "
                                                     "every one the study was queued for)")
    resend.set_defaults(handler=cmd_resend)


def _listing(sub, name: str, help_text: str, handler) -> None:
    """A command that lists one of the node's queues, as text or ``--json``."""
    parser = sub.add_parser(name, help=help_text)
    add_node_flags(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=handler)


def cmd_studies(args: argparse.Namespace) -> int:
    from ortho_node.audit.views import study_inventory

    studies = study_inventory(session_factory(settings_of(args)))
    if args.json:
        print(json.dumps(studies, indent=2, default=str))
        return 0
    for study in studies:
        print(f"{study['study_instance_uid']}  {study['instance_count']} instances in "
              f"{len(study['series'])} series, last received {study['last_received_at']}")
        assembly, job = study["assembly"], study["job"]
        if study["waiting"]:
            print(f"    {study['waiting']}")
        if study["ignored"]:
            print(f"    {study['ignored']}: stored, not analysed")
        if study["storage"]:
            print(f"    {study['storage']}")
        if job is not None:
            cause = f"; skipped: {job['skip_cause']}" if job["skip_cause"] else ""
            print(f"    job {job['id']} {job['state']}: {job['reason']}{cause}")
        if assembly is not None:
            planes = ", ".join(f"{p} <- {v['series_instance_uid']} ({v['reason']})"
                               for p, v in assembly["planes"].items())
            print(f"    {assembly['joint']} {assembly['laterality']} {assembly['outcome']}: {planes or 'no planes'}"
                  f"{'; missing ' + ', '.join(assembly['missing_planes']) if assembly['missing_planes'] else ''}"
                  f"{'; ' + assembly['skip_reason'] if assembly['skip_reason'] else ''}")
        for series in study["series"]:
            print(f"    {series['series_instance_uid']}  {series['modality'] or '-':3} "
                  f"{series['instance_count']:5d}  {series['series_description'] or ''}"
                  f"{'  (' + series['ignored'] + ')' if series['ignored'] else ''}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from ortho_node.audit.views import list_jobs

    jobs = list_jobs(session_factory(settings_of(args)))
    if args.json:
        print(json.dumps(jobs, indent=2, default=str))
        return 0
    for job in jobs:
        error = (f"  skipped: {job['skip_cause']}" if job["skip_cause"] else
                 f"  last error: {job['last_error']}" if job["last_error"] else "")
        print(f"job {job['id']:5d} {job['state']:10} attempts {job['attempts']}  {job['study_instance_uid']}  "
              f"{job['reason']}{error}")
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    """Queue a job in the database; the serving node picks it up at its next poll."""
    from ortho_node.audit.trail import AuditKind
    from ortho_node.scheduling.jobs import JobQueue, NotAnalysable, retry_policy
    from ortho_node.scheduling.timers import SystemTime

    settings = settings_of(args)
    queue = JobQueue(session_factory(settings), SystemTime(), retry_policy(settings.scheduling))
    try:
        job_id = queue.enqueue(args.study_uid, "reprocess requested", force=True, kind=AuditKind.JOB_QUEUED)
    except NotAnalysable as exc:  # a job would fail at assembly: say why instead
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"job {job_id} queued for study {args.study_uid}")
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    from ortho_node.audit.views import delivery_queue

    items = delivery_queue(session_factory(settings_of(args)))
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
    """Queue in the database; the serving node sends them at its next poll. Results built while no destination
    was configured are found among the study's built results."""
    from ortho_node.delivery.worker import DeliveryService, UnknownDestination

    settings = settings_of(args)
    try:
        count, targets = DeliveryService(settings, session_factory(settings)).resend(args.study_uid, args.to)
    except UnknownDestination as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"{count} result objects queued for {', '.join(targets)}")
    return 0
