"""Issue 22, item 3: results built while no destination existed are not a dead end. After a destination is added,
``ortho-node resend UID --to PACS`` finds the study's built result objects and queues them; the node then
delivers them to a real Storage SCP on loopback."""

from __future__ import annotations

import time

from pydicom import dcmread
from sqlalchemy import func, select

from ortho_node.app.cli.main import main
from ortho_node.db.models import DeliveryItem, StudyResult
from ortho_node.scheduling.timers import ManualTime
from tests.assembly.factory import EndedAssociations, advance, store
from tests.console.seeded import KnownPrediction
from tests.reports.study_factory import make_knee_study


def _node(settings, predictor=None):
    from ortho_node.app.node import Node

    node = Node(settings, time=ManualTime(), predictor=predictor)
    node.ended = EndedAssociations()
    node.intake.add_listener(node.ended)
    node.prepare()
    node.start()
    return node


def _count(node, *conditions) -> int:
    with node.session_factory() as session:
        return session.scalar(select(func.count(DeliveryItem.id)).where(*conditions))


def test_resend_after_adding_a_destination_delivers_results_built_without_one(make_settings, fake_pacs, tmp_path,
                                                                              capsys):
    knee = make_knee_study(tmp_path / "knee")
    study_uid = knee.prediction.study_instance_uid
    node = _node(make_settings(**{"storage.fsync": False}), KnownPrediction(knee.prediction))
    try:
        store(node.scp.port, [dcmread(p) for paths in knee.paths.values() for p in paths])
        node.ended.wait()
        advance(node, 11)  # ready, assembled, predicted, objects built: queued for no destination
        with node.session_factory() as session:
            [result] = session.scalars(select(StudyResult)).all()
        assert result.objects and _count(node) == 0
    finally:
        node.stop()

    pacs = fake_pacs()
    config = tmp_path / "node.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\nmin_free_mb = 0\nfsync = false\n\n'
                      f'[dicom]\nhost = "127.0.0.1"\nport = 0\n\n'
                      f'[[destinations]]\nname = "PACS"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.port}\n')
    capsys.readouterr()
    assert main(["resend", study_uid, "--to", "PACS", "--config", str(config)]) == 0
    objects = len(result.objects)
    assert capsys.readouterr().out == f"{objects} result objects queued for PACS\n"
    assert main(["resend", study_uid, "--to", "ARCHIVE", "--config", str(config)]) == 2
    assert "'ARCHIVE' is neither configured" in capsys.readouterr().err

    node = _node(make_settings(**{"storage.fsync": False, "delivery.timeout": 5.0,
                                  "destinations": [f"PACS=PACS@127.0.0.1:{pacs.port}"]}))
    try:
        deadline = time.monotonic() + 60
        while _count(node, DeliveryItem.state == "delivered") < objects and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _count(node, DeliveryItem.state == "delivered", DeliveryItem.destination == "PACS") == objects
    finally:
        node.stop()
    assert set(pacs.stored) == {obj["sop_instance_uid"] for obj in result.objects}
    # Resent once more, the queue's own rows are reset (no duplicates): still one row per object.
    assert main(["resend", study_uid, "--config", str(config)]) == 0
    assert capsys.readouterr().out.endswith(f"{objects} result objects queued for PACS\n")
