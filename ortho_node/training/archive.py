"""Labelled studies taken from a node's own archive (issue 26): the department lists StudyInstanceUIDs, one per
line, and the files come from the node's database and instance store, so studies the node already received
need no export. ``--archive UIDS`` beside ``--config`` / ``--data-dir`` on ``train finetune`` and ``train
evaluate`` (the same flags that find the node for every other command)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sqlalchemy import select

from ortho_node.config import Settings, load_settings
from ortho_node.db.engine import make_engine, make_session_factory
from ortho_node.db.models import Instance, Series, Study
from ortho_node.intake.storage import InvalidUID, LocalInstanceStore, check_uid
from ortho_node.training.labelled import LabelledDataError, StudyFiles


def add_arguments(parser: argparse.ArgumentParser, source: argparse._MutuallyExclusiveGroup) -> None:
    """``--archive`` in the command's group of data sources; the node flags beside it."""
    source.add_argument("--archive", type=Path, metavar="UIDS",
                        help="text file of StudyInstanceUIDs (one per line, # comments) of studies in this node's "
                             "archive (found by --config / --data-dir), read instead of a folder")
    parser.add_argument("--config", metavar="FILE", help="the node's TOML configuration (--archive; default: "
                                                         "$ORTHO_NODE_CONFIG)")
    parser.add_argument("--data-dir", help="the node's data folder (--archive; default as for serve)")


def archive_files(args: argparse.Namespace) -> StudyFiles:
    """The stored files of the studies ``args.archive`` lists (:class:`LabelledDataError` naming every UID that
    is not one, not stored, or whose instances retention purged)."""
    settings = load_settings(args.config, overrides={"storage.data_dir": args.data_dir})
    return study_files(read_uids(args.archive), settings)


def read_uids(path: Path) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(line for line in lines if line))


def study_files(uids: list[str], settings: Settings) -> StudyFiles:
    problems, valid = [], []
    for uid in uids:
        try:
            valid.append(check_uid("StudyInstanceUID", uid))
        except InvalidUID as error:
            problems.append(f"{uid!r}: {error}")
    if not uids:
        problems.append("the list names no study")
    if not settings.database.url and not (settings.data_dir / "ortho-node.db").is_file():
        problems.append(f"no node database in {settings.data_dir} (give the node's --data-dir or --config)")
        valid = []  # nothing to look them up in
    if not valid:
        raise LabelledDataError(problems)
    store = LocalInstanceStore(settings.data_dir, fsync=False)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(
                select(Study.study_instance_uid, Instance.file_path, Instance.purged_at)
                .join(Series, Series.study_id == Study.id).join(Instance, Instance.series_id == Series.id)
                .where(Study.study_instance_uid.in_(valid), Instance.ignored_by.is_(None))).all()
    finally:
        engine.dispose()
    files: dict[str, list[Path]] = {}
    purged: set[str] = set()
    for uid, key, purged_at in rows:
        if purged_at is not None:
            purged.add(uid)
        else:
            files.setdefault(uid, []).append(store.local_path(key))
    for uid in valid:
        if uid in purged:
            problems.append(f"study {uid}: its instances were purged by retention")
        elif uid not in files:
            problems.append(f"study {uid}: not in the node's archive")
        else:
            problems += [f"study {uid}: {path.name} is recorded but not on disk" for path in files[uid]
                         if not path.is_file()]
    if problems:
        raise LabelledDataError(problems)
    return StudyFiles(tuple(sorted(p for paths in files.values() for p in paths)),
                      f"the node's archive ({len(valid)} listed studies)")
