"""Issue 24: the patient ID and name recorded for the console's search go with the study's received instances:
the purger clears them when it deletes those, a kept or undelivered study keeps them, and instances received
after the purge bring them back from their header."""

from __future__ import annotations

from sqlalchemy import update

from ortho_node.db.models import Study
from ortho_node.intake.catalog import Catalog, NewInstance
from ortho_node.intake.header import InstanceHeader
from ortho_node.retention.purger import Purger
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, mr_dataset
from tests.retention.conftest import FakeClock


def _identify(archive, uid: str) -> None:
    with archive.sessions.begin() as session:
        session.execute(update(Study).where(Study.study_instance_uid == uid).values(
            patient_id=PATIENT_ID, patient_name=PATIENT_NAME, accession_number="ACC9"))


def test_purge_clears_the_patient_identifiers_and_a_new_arrival_restores_them(archive, node_settings):
    studies = {state: archive.study(state) for state in ("delivered", "kept", "delivery_pending")}
    for uid in studies.values():
        _identify(archive, uid)
    clock = FakeClock()
    clock.advance(days=31)
    report = Purger(node_settings(instances_days=30), archive.sessions, clock=clock).run()
    assert {d.study_instance_uid for d in report.deletions} == {studies["delivered"]}
    purged = archive.study_row(studies["delivered"])
    assert purged.instances_purged_at is not None and (purged.patient_id, purged.patient_name) == (None, None)
    assert purged.accession_number == "ACC9"  # the order's number stays with the row's history
    for state in ("kept", "delivery_pending"):
        row = archive.study_row(studies[state])
        assert (row.patient_id, row.patient_name) == (PATIENT_ID, PATIENT_NAME), state

    # the study sent again: its first new instance clears the purge mark and brings the identifiers back
    catalog = Catalog(archive.sessions.kw["bind"])
    header = InstanceHeader.from_dataset(mr_dataset(study_uid=studies["delivered"], series_uid="1.2.3.99.1",
                                                    instance_number=1))
    catalog.record(NewInstance(header, path="instances/again.dcm", size=10, sha256="0" * 64,
                               transfer_syntax_uid="1.2.840.10008.1.2.1", association_id=None, calling_ae="MR1"))
    again = archive.study_row(studies["delivered"])
    assert again.instances_purged_at is None
    assert (again.patient_id, again.patient_name) == (PATIENT_ID, PATIENT_NAME)
