"""Start-up recovery scans the archive only when the last stop may have left files without rows: after a
crash, or when the database is not the one a clean stop left. A clean stop leaves a marker that vouches for
its database; a restart consumes it, so a later crash scans again."""

from __future__ import annotations

import json
import logging

from sqlalchemy import delete, func, select

from ortho_node.app.node import Node
from ortho_node.db.models import Instance
from ortho_node.delivery.scu import RemoteNode, send_files
from ortho_node.intake.recovery import CLEAN_SHUTDOWN
from tests.dicom_factory import mr_dataset, write


def _store_two(node: Node, folder) -> None:
    datasets = [mr_dataset(seed=i, instance_number=i + 1, study_uid="1.2.826.0.1.3680043.8.498.501",
                           series_uid="1.2.826.0.1.3680043.8.498.501.1") for i in range(2)]
    files = [write(ds, folder / f"{i}.dcm") for i, ds in enumerate(datasets)]
    results = send_files(RemoteNode(node.settings.dicom.ae_title, "127.0.0.1", node.scp.port), files)
    assert [r.status for r in results] == [0x0000, 0x0000]


def _rows(node: Node) -> int:
    with node.session_factory() as session:
        return session.scalar(select(func.count(Instance.id)))


def test_clean_stop_spares_the_scan_and_a_changed_database_does_not(make_settings, tmp_path, caplog):
    settings = make_settings()
    node = Node(settings)
    node.prepare()
    node.start()
    _store_two(node, tmp_path / "sent")
    node.stop()
    marker = settings.data_dir / CLEAN_SHUTDOWN
    assert json.loads(marker.read_text())["instances"] == 2

    again = Node(settings)
    with caplog.at_level(logging.INFO, logger="ortho_node.intake.recovery"):
        again.prepare()
    assert "no recovery scan" in caplog.text and _rows(again) == 2
    assert not marker.exists()  # a crash from now on must lead to a scan
    again.start()
    again.stop()

    # While the node is stopped the database loses the rows (restored from an older backup, say): the marker
    # no longer matches, so the next start scans and indexes both files again.
    with again.session_factory.begin() as session:
        session.execute(delete(Instance))
    again.engine.dispose()
    caplog.clear()
    third = Node(settings)
    with caplog.at_level(logging.INFO, logger="ortho_node.intake.recovery"):
        third.prepare()
    assert "no recovery scan" not in caplog.text and "indexed 2 stored files" in caplog.text
    assert _rows(third) == 2
    third.engine.dispose()


def test_a_stop_without_a_served_port_leaves_no_marker(make_settings):
    settings = make_settings()
    node = Node(settings)
    node.prepare()
    node.stop()  # e.g. `ortho-node db upgrade` style use: nothing was served, nothing is vouched for
    assert not (settings.data_dir / CLEAN_SHUTDOWN).exists()
