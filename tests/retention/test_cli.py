"""``ortho-node purge [--dry-run]`` and ``ortho-node keep [--clear]`` on a node found by ``--config``, in-process
(``main(argv)``), against the real wall clock (the studies were delivered months ago)."""

from __future__ import annotations

import datetime as dt
import json

from ortho_node.app.cli.main import main
from ortho_node.clock import utcnow


def _config(tmp_path, archive, database_url: str, **retention) -> str:
    path = tmp_path / "node.toml"
    lines = ["[storage]", f'data_dir = "{archive.data_dir}"', "[database]", f'url = "{database_url}"', "[retention]"]
    lines += [f"{key} = {value}" for key, value in retention.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_purge_dry_run_deletes_nothing_then_purge_does(archive, database_url, tmp_path, capsys):
    old = utcnow() - dt.timedelta(days=90)
    delivered, pending = archive.study("delivered", at=old), archive.study("delivery_pending", at=old)
    config = _config(tmp_path, archive, database_url, instances_days=30)

    assert main(["purge", "--dry-run", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"would delete instances of {delivered} (3 files, 0.0 MB): delivered 89 days ago " \
           "(retention.instances_days 30)" in out
    assert "(dry run: nothing deleted)" in out and "left alone: 1 delivery pending" in out
    assert len(archive.instance_files(delivered)) == 3 and archive.events("instances_purged") == []

    assert main(["purge", "--config", config, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [d["study_instance_uid"] for d in report["deletions"]] == [delivered]
    assert archive.instance_files(delivered) == [] and len(archive.instance_files(pending)) == 3


def test_keep_protects_a_study_until_cleared(archive, database_url, tmp_path, capsys):
    uid = archive.study("delivered", at=utcnow() - dt.timedelta(days=90))
    config = _config(tmp_path, archive, database_url, instances_days=30)
    assert main(["keep", uid, "--reason", "training data", "--config", config]) == 0
    assert "marked to keep: training data: never purged" in capsys.readouterr().out
    main(["purge", "--config", config])
    assert "left alone: 1 marked to keep" in capsys.readouterr().out
    assert len(archive.instance_files(uid)) == 3 and archive.study_row(uid).keep_reason == "training data"

    assert main(["keep", "--clear", uid, "--config", config]) == 0
    main(["purge", "--config", config])
    assert archive.instance_files(uid) == []
    assert [e.kind for e in archive.events("study_keep_set") + archive.events("study_keep_cleared")] == [
        "study_keep_set", "study_keep_cleared"]
    assert main(["keep", "1.2.3.999", "--config", config]) == 1


def test_doctor_reports_retention_and_the_watermarks(make_settings):
    from ortho_node.app.cli.doctor import Status, _retention

    [off] = _retention(make_settings())
    assert off.status is Status.OK and off.detail.startswith("off: received instances and results are kept")
    huge = 10**9  # MB: more than any disk has free
    [below] = _retention(make_settings(**{"retention.purge_below_free_mb": huge,
                                          "retention.purge_until_free_mb": huge + 1}))
    assert below.status is Status.WARN and "below the watermark" in below.detail
    [useless] = _retention(make_settings(**{"storage.min_free_mb": 500, "retention.purge_below_free_mb": 400,
                                            "retention.purge_until_free_mb": 600}))
    assert useless.status is Status.WARN and "not above storage.min_free_mb 500" in useless.detail
    [fine] = _retention(make_settings(**{"retention.instances_days": 30}))
    assert fine.status is Status.OK and "instances 30 d after delivery" in fine.detail
