"""``ortho-node audit``: the admin views (``ortho_node.audit.views``, shared with the console) as text, JSON or CSV."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from ortho_node.app.cli import context
from ortho_node.audit import views as q
from ortho_node.labels import Joint


def register(sub) -> None:
    """``ortho-node audit``: what happened to studies, results and deliveries (shared with the web console)."""
    audit = sub.add_parser("audit", help="admin audit views: studies, a study's timeline, deliveries, failures")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    views = {"studies": "processed studies with joint, status, findings, turnaround and delivery state",
             "deliveries": "result deliveries (status: pending, delivered, failed)",
             "failures": "failed steps: job retries and failures, skipped studies, flagged deliveries",
             "summary": "per-day volumes, failures and turnaround percentiles"}
    for name, help_text in views.items():
        view = audit_sub.add_parser(name, help=help_text)
        context.add_node_flags(view)
        _add_audit_output_flags(view)
        if name == "summary":
            view.add_argument("--days", type=int, default=14, help="days up to today (default 14)")
            continue
        view.add_argument("--since", type=_iso_day, metavar="YYYY-MM-DD", help="from this day (UTC)")
        view.add_argument("--until", type=_iso_day, metavar="YYYY-MM-DD", help="up to this day (UTC)")
        view.add_argument("--status", help="studies: " + ", ".join(q.STATUSES) +
                          "; deliveries: pending, delivered, failed; failures: a step name")
        view.add_argument("--search", help="part of a Study Instance UID (or study description)")
        view.add_argument("--limit", type=int, default=500)
        if name == "studies":
            view.add_argument("--joint", choices=[joint.value for joint in Joint])
            view.add_argument("--ae", dest="calling_ae", metavar="AE", help="sending (calling) AE title")
    timeline = audit_sub.add_parser("timeline", help="a study's timeline, results and deliveries")
    context.add_node_flags(timeline)
    _add_audit_output_flags(timeline)
    timeline.add_argument("study_uid", metavar="STUDY_UID")
    audit.set_defaults(handler=cmd_audit)


def _add_audit_output_flags(parser: argparse.ArgumentParser) -> None:
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON on stdout")
    output.add_argument("--csv", action="store_true", help="CSV on stdout")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of stdout")




def _iso_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def cmd_audit(args: argparse.Namespace) -> int:
    return run(args, context.session_factory(context.settings_of(args)))



def run(args: argparse.Namespace, session_factory: sessionmaker[Session]) -> int:
    view = args.audit_command
    if view == "timeline":
        return _timeline(args, session_factory)
    if view == "summary":
        rows = q.daily_summary(session_factory, days=max(1, args.days))
        columns = tuple(rows[0]) if rows else ("day",)
        return _emit(args, rows, columns, _summary_line)
    filters = q.Filters(since=args.since, until=args.until, status=args.status, search=args.search,
                        limit=args.limit, joint=getattr(args, "joint", None),
                        calling_ae=getattr(args, "calling_ae", None))
    if view == "studies":
        if args.status and args.status not in q.STATUSES:
            print(f"error: --status must be one of {', '.join(q.STATUSES)}", file=sys.stderr)
            return 2
        return _emit(args, q.list_studies(session_factory, filters), q.STUDY_COLUMNS, _study_line)
    if view == "deliveries":
        return _emit(args, q.list_deliveries(session_factory, filters), q.DELIVERY_COLUMNS, _delivery_line)
    return _emit(args, q.list_failures(session_factory, filters), q.FAILURE_COLUMNS, _failure_line)


def _timeline(args: argparse.Namespace, session_factory: sessionmaker[Session]) -> int:
    entries = q.study_timeline(session_factory, args.study_uid)
    if entries is None:
        print(f"error: study {args.study_uid} is not stored", file=sys.stderr)
        return 1
    storage = q.study_storage(session_factory, args.study_uid)
    if args.json:
        document = {"study_instance_uid": args.study_uid, "storage": storage, "timeline": entries,
                    "results": q.study_results(session_factory, args.study_uid),
                    "deliveries": q.list_deliveries(session_factory, study_instance_uid=args.study_uid)}
        return _write(args, json.dumps(document, indent=2, default=str) + "\n")
    if args.csv or not storage["state"]:
        return _emit(args, entries, q.TIMELINE_COLUMNS, _timeline_line)
    return _write(args, "".join(_timeline_line(row) + "\n" for row in entries) + f"now: {storage['state']}\n")


def _emit(args: argparse.Namespace, rows: list[dict[str, Any]], columns, line) -> int:
    if args.json:
        return _write(args, json.dumps(rows, indent=2, default=str) + "\n")
    if args.csv:
        return _write(args, q.to_csv(rows, columns))
    return _write(args, "".join(line(row) + "\n" for row in rows))


def _write(args: argparse.Namespace, text: str) -> int:
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _study_line(row: dict[str, Any]) -> str:
    findings = ", ".join(row["findings_present"]) or ("none" if row["model_version"] else "-")
    text = (f"{row['study_instance_uid']}  {row['status']:15} {row['joint'] or '-':8} {row['laterality'] or '-'}  "
            f"from {','.join(row['calling_aes']) or '-'}  last received {row['last_received_at']:%Y-%m-%d %H:%M:%S}"
            f"  turnaround {_seconds(row['turnaround_seconds'])}  findings {findings}  "
            f"deliveries {row['delivered']} ok / {row['pending']} pending / {row['failed']} failed")
    if row["model_version"]:
        text += f"  model {row['model_version']}"
    if row["waiting"]:
        text += f"\n    {row['waiting']}"
    for reason in row["failure_reasons"]:
        text += f"\n    {reason}"
    return text


def _delivery_line(row: dict[str, Any]) -> str:
    status = "" if row["last_status"] is None else f" 0x{row['last_status']:04X}"
    error = f"  {row['last_error']}" if row["last_error"] and row["state"] != "delivered" else ""
    return (f"{row['study_instance_uid']}  {row['destination']:12} {row['kind']:7} {row['state']:9} "
            f"attempts {row['attempts']}{status}{error}")


def _failure_line(row: dict[str, Any]) -> str:
    return f"{row['at']:%Y-%m-%d %H:%M:%S}  {row['study_instance_uid']}  {row['step']:15} {row['detail']}"


def _timeline_line(row: dict[str, Any]) -> str:
    job = f"job {row['job_id']}" if row["job_id"] is not None else ""
    return f"{row['at']:%Y-%m-%d %H:%M:%S.%f}  {row['step']:18} {job:8} {row['detail']}"


def _summary_line(row: dict[str, Any]) -> str:
    return (f"{row['day']}  studies {row['studies']:4d}  instances {row['instances']:6d}  results {row['results']:4d}"
            f"  delivered {row['delivered']:5d}  failures {row['failures']:3d}  turnaround p50 "
            f"{_seconds(row['turnaround_p50'])} p90 {_seconds(row['turnaround_p90'])}")
