"""``ortho-node purge`` (one pass of the purger, or what it would delete) and ``ortho-node keep`` (mark a study to
keep, or clear the mark)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ortho_node.app.cli.context import add_node_flags, session_factory, settings_of

MB = 1024 * 1024
#: The CPU priority a pass lowers itself by (nice), so that a node receiving on the same machine keeps its pace.
PURGE_NICENESS = 10


def register(sub) -> None:
    purge = sub.add_parser("purge", help="delete what the [retention] rules and the disk watermark allow, now "
                                         "(the serving node also does it every retention.purge_interval)")
    add_node_flags(purge)
    purge.add_argument("--dry-run", action="store_true", help="print what would be deleted and why; delete nothing")
    purge.add_argument("--json", action="store_true")
    purge.set_defaults(handler=cmd_purge)

    keep = sub.add_parser("keep", help="mark a study to keep (never purged), or --clear the mark")
    add_node_flags(keep)
    keep.add_argument("study_uid", metavar="STUDY_UID")
    keep.add_argument("--clear", action="store_true", help="remove the mark: the retention rules apply again")
    keep.add_argument("--reason", default="", help="why it is kept (recorded with the mark), e.g. 'training data'")
    keep.set_defaults(handler=cmd_keep)


def cmd_purge(args: argparse.Namespace) -> int:
    from ortho_node.retention.purger import Purger

    settings = settings_of(args)
    # Run beside a serving node, a pass gives way to its intake: the node's own pass paces itself instead.
    os.nice(PURGE_NICENESS)
    report = Purger(settings, session_factory(settings)).run(dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    retention = settings.retention
    if not retention.enabled:
        print("retention is off ([retention] sets no period and no watermark): nothing is deleted by age"
              + ("; only superseded result files" if retention.supersede_results else ""))
    verb = "would delete" if args.dry_run else "deleted"
    for deletion in report.deletions:
        print(f"{verb} {deletion.what} of {deletion.study_instance_uid} ({deletion.files} files, "
              f"{deletion.bytes / MB:.1f} MB): {deletion.reason}")
    print(f"{len(report.deletions)} deletions, {report.bytes / MB:.1f} MB{' (dry run: nothing deleted)' if args.dry_run else ''}")
    if report.held:
        print("left alone: " + ", ".join(f"{count} {why}" for why, count in sorted(report.held.items())))
    if report.free_before is not None:
        after = f" -> {report.free_after // MB} MB" if report.free_after is not None else ""
        print(f"free space {report.free_before // MB} MB{after}; watermark below {retention.purge_below_free_mb} MB, "
              f"until {retention.purge_until_free_mb} MB"
              + ("; still below: nothing more may be deleted" if report.short else ""))
    return 0


def cmd_keep(args: argparse.Namespace) -> int:
    from ortho_node.retention.keep import set_keep

    settings = settings_of(args)
    try:
        print(set_keep(session_factory(settings), args.study_uid, not args.clear, reason=args.reason))
    except LookupError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    return 0
