"""Issues 23 and 24: instances made durable in batches. A batch (a STOW-RS request's instances, concurrent
associations' C-STOREs) is recorded in one transaction, yet every instance keeps the status it would get alone: a
duplicate inside the batch or already stored, a row another receiver inserted meanwhile, the database failing under
the batch (0xA700, the files kept for start-up recovery). Real databases, real files, real associations."""

from __future__ import annotations

import logging
import threading
import time

from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom import AE
from sqlalchemy import func, insert, select

from ortho_node.db.models import Instance, Series
from ortho_node.dicom_status import Status
from ortho_node.intake.header import InstanceHeader
from ortho_node.intake.receive import AssociationRef, IncomingInstance
from tests.dicom_factory import mr_dataset
from tests.dicomweb.stow_client import part10
from tests.intake.contention import InstancesLocked, instance_commits


class Heard:
    """An intake listener that keeps what it hears (as the scheduler would act on it)."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def instance_stored(self, instance) -> None:
        self.stored.append(instance.sop_uid)

    def association_ended(self, association_id, state) -> None:
        pass


def _incoming(ds) -> IncomingInstance:
    return IncomingInstance(encoded=part10(ds), header=InstanceHeader.from_dataset(ds),
                            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                            affected_sop_class_uid=str(ds.SOPClassUID),
                            affected_sop_instance_uid=str(ds.SOPInstanceUID),
                            association=AssociationRef(None, "BATCH", "127.0.0.1"))


def _series(count: int, *, first: int = 1) -> list:
    study, series = generate_uid(), generate_uid()
    return [mr_dataset(study_uid=study, series_uid=series, seed=i, instance_number=i)
            for i in range(first, first + count)]


def _rows(node) -> dict[str, Instance]:
    with node.session_factory() as session:
        return {row.sop_instance_uid: row for row in session.scalars(select(Instance))}


def _files(node) -> list:
    return list(node.store.instances_dir.rglob("*.dcm"))


def _wait_for_files(node, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(_files(node)) < count:
        assert time.monotonic() < deadline, f"{len(_files(node))} of {count} files written"
        time.sleep(0.01)


def _answers(results) -> list[tuple[int, str, bool]]:
    return [(int(result.status), result.reason, result.duplicate) for result in results]


STORED, DUPLICATE, UNAVAILABLE = (0, "stored", False), (0, "duplicate", True), (0xA700, "database unavailable", False)


def test_a_batch_is_one_transaction_and_answers_duplicates_inside_and_outside_it(start_node, database_url):
    node = start_node(**{"database.url": database_url})
    earlier, a, b, c = _series(4)
    node.intake.receive(_incoming(earlier))
    heard = Heard()
    node.intake.add_listener(heard)

    with instance_commits(node.engine) as commits:
        results = node.intake.receive_many([_incoming(ds) for ds in (a, b, a, earlier, c)])

    assert _answers(results) == [STORED, STORED, DUPLICATE, DUPLICATE, STORED]
    assert len(commits) == 1, "the batch's rows in one transaction"
    rows = _rows(node)
    assert set(rows) == {str(ds.SOPInstanceUID) for ds in (earlier, a, b, c)}
    for ds in (a, b, c):
        assert node.store.read(rows[str(ds.SOPInstanceUID)].file_path) == part10(ds)
    assert len(_files(node)) == 4
    with node.session_factory() as session:
        assert session.scalar(select(Series.instance_count)) == 4
    assert heard.stored == [str(ds.SOPInstanceUID) for ds in (a, b, c)], "told once each, after the commit"


def test_a_row_another_receiver_inserts_meanwhile_sends_the_batch_one_by_one(start_node, database_url, caplog):
    caplog.set_level(logging.INFO, logger="ortho_node.intake.durable")
    node = start_node(**{"database.url": database_url, "database.busy_timeout": 30})
    earlier, taken, new1, new2 = _series(4)
    node.intake.receive(_incoming(earlier))
    with node.session_factory() as session:
        series_id = session.scalar(select(Series.id))
    results: list = []
    lock = InstancesLocked(database_url)
    try:
        batch = threading.Thread(target=lambda: results.extend(
            node.intake.receive_many([_incoming(ds) for ds in (new1, taken, new2)])))
        batch.start()
        _wait_for_files(node, 4)  # past its duplicate check: its files are written, its transaction waits
        # Another receiver of the same database (a cluster) records the same instance first.
        lock.connection.execute(insert(Instance).values(
            series_id=series_id, sop_instance_uid=str(taken.SOPInstanceUID), sop_class_uid=MRImageStorage,
            transfer_syntax_uid=str(taken.file_meta.TransferSyntaxUID), calling_ae="OTHER",
            file_path=node.store.key(taken.StudyInstanceUID, taken.SeriesInstanceUID, taken.SOPInstanceUID),
            file_size=len(part10(taken)), sha256="0" * 64))
    finally:
        lock.release()
    batch.join(60)

    assert _answers(results) == [STORED, DUPLICATE, STORED]
    assert "a batch of 3 instances not recorded together (IntegrityError)" in caplog.text
    rows = _rows(node)
    assert rows[str(taken.SOPInstanceUID)].calling_ae == "OTHER", "acknowledged once, the other row kept"
    assert {rows[str(ds.SOPInstanceUID)].calling_ae for ds in (new1, new2)} == {"BATCH"}


def test_the_database_failing_under_a_batch_refuses_its_new_instances_and_keeps_their_files(start_node,
                                                                                            database_url):
    node = start_node(**{"database.url": database_url, "database.busy_timeout": 1})
    earlier, new1, new2, new3 = _series(4)
    unreadable = mr_dataset(seed=9)
    del unreadable.StudyInstanceUID
    node.intake.receive(_incoming(earlier))
    batch = [_incoming(ds) for ds in (new1, earlier, unreadable, new2, new3)]
    results: list = []
    lock = InstancesLocked(database_url)
    try:
        if lock.sqlite:  # the batch's transaction waits out the busy timeout for the write lock, then fails
            results = node.intake.receive_many(batch)
        else:  # the server ends the node's sessions while the batch's transaction waits for the lock
            receiving = threading.Thread(target=lambda: results.extend(node.intake.receive_many(batch)))
            receiving.start()
            lock.wait_for_blocked_writer()
            lock.cut_off_others()
            receiving.join(60)
    finally:
        lock.release()

    refused = (int(Status.CANNOT_UNDERSTAND_MISSING_UID), "StudyInstanceUID missing", False)
    assert _answers(results) == [UNAVAILABLE, DUPLICATE, refused, UNAVAILABLE, UNAVAILABLE]
    assert set(_rows(node)) == {str(earlier.SOPInstanceUID)}
    kept = {path.stem for path in _files(node)}
    assert kept == {str(ds.SOPInstanceUID) for ds in (earlier, new1, new2, new3)}, "complete files stay"
    assert node.recovery.recover_unrecorded_files() == 3  # what a restart's scan does with them
    assert set(_rows(node)) == {str(ds.SOPInstanceUID) for ds in (earlier, new1, new2, new3)}


class Association:
    """A pynetdicom SCU on its own thread: opens an association, then sends what it is given when told to."""

    def __init__(self, port: int, datasets: list) -> None:
        self.answers: list[tuple[int, float]] = []  # (status, when answered)
        self.ready, self.go, self.more = threading.Event(), threading.Event(), threading.Event()
        self._port, self._datasets = port, datasets
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        ae = AE(ae_title="GROUP")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", self._port, ae_title="ORTHODIFF")
        try:
            self.ready.set()
            self.go.wait(60)
            self._send(assoc, self._datasets[:1])
            self.more.wait(60)
            self._send(assoc, self._datasets[1:])
        finally:
            assoc.release()

    def _send(self, assoc, datasets) -> None:
        for ds in datasets:
            response = assoc.send_c_store(ds)
            self.answers.append((int(response.Status) if "Status" in response else -1, time.monotonic()))


def test_concurrent_associations_share_commits_and_each_is_answered_after_its_own(start_node, database_url):
    node = start_node(**{"database.url": database_url, "database.busy_timeout": 30})
    series = [_series(6) for _ in range(4)]
    senders = [Association(node.scp.port, datasets) for datasets in series]
    assert all(sender.ready.wait(30) for sender in senders)
    with instance_commits(node.engine) as commits:
        lock = InstancesLocked(database_url)  # the first commit is held up: the other three queue behind it
        try:
            for sender in senders:
                sender.go.set()
            _wait_for_files(node, 4)
            if not lock.sqlite:
                lock.wait_for_blocked_writer()
            time.sleep(0.3)  # the last written file's caller joins the queue
            assert not any(sender.answers for sender in senders), "no C-STORE answered before its row is committed"
        finally:
            released_at = time.monotonic()
            lock.release()
        deadline = time.monotonic() + 30
        while not all(sender.answers for sender in senders) and time.monotonic() < deadline:
            time.sleep(0.01)
        first_round = len(commits)
        for sender in senders:
            sender.more.set()
        for sender in senders:
            sender.thread.join(60)

    assert first_round == 2, "the held-up commit alone, then the three queued behind it together"
    assert all(sender.answers[0][1] >= released_at for sender in senders)
    assert [status for sender in senders for status, _ in sender.answers] == [0] * 24
    rows = _rows(node)
    assert set(rows) == {str(ds.SOPInstanceUID) for datasets in series for ds in datasets}
    assert len(_files(node)) == 24
    with node.session_factory() as session:
        assert session.scalars(select(Series.instance_count)).all() == [6] * 4
        assert session.scalar(select(func.count()).select_from(Instance)) == 24

