"""Output of ``ortho-node audit``: the admin views as text, JSON or CSV (``ortho_node.audit.views``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from ortho_node.audit import views as q


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
    if args.json:
        document = {"study_instance_uid": args.study_uid, "timeline": entries,
                    "results": q.study_results(session_factory, args.study_uid),
                    "deliveries": q.list_deliveries(session_factory, study_instance_uid=args.study_uid)}
        return _write(args, json.dumps(document, indent=2, default=str) + "\n")
    return _emit(args, entries, q.TIMELINE_COLUMNS, _timeline_line)


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
