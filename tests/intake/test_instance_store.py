"""Issue 25: the node touches stored instances only through the ``InstanceStore`` interface. A second store,
written here the way an object store would keep them (flat objects under prefixed keys, outside the data folder,
local copies for readers), takes the file system's place; intake, assembly and the crash recovery's scan run
unchanged on it, and nothing lands in the data folder's ``instances`` area."""

from __future__ import annotations

import copy
import hashlib
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from ortho_node.db.models import Instance
from ortho_node.intake.storage import InvalidUID, StoredFile, StorageFull, check_uid
from tests.assembly.factory import advance, assemblies, send, study


class PrefixedObjectStore:
    """Instances as flat objects in ``root/objects`` named by their key (``ortho/<study>/<series>/<sop>``, the
    slashes escaped), readers given copies in ``root/cache``; every call counted."""

    PREFIX = "ortho/"

    def __init__(self, root: Path) -> None:
        self.objects, self.cache = root / "objects", root / "cache"
        self.objects.mkdir(parents=True)
        self.cache.mkdir()
        self.copies = 0

    def key(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        for name, value in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                            ("SOPInstanceUID", sop_uid)):
            check_uid(name, value)
        return f"{self.PREFIX}{study_uid}/{series_uid}/{sop_uid}"

    def _object(self, key: str) -> Path:
        if not key.startswith(self.PREFIX) or ".." in key:
            raise InvalidUID(f"key {key!r} is not one of this store's")
        return self.objects / key.replace("/", "%")

    def write(self, key: str, payload: bytes) -> StoredFile:
        if len(payload) > shutil.disk_usage(self.objects).free:
            raise StorageFull(28, "no space left for the instance")
        partial = self._object(key).with_suffix(".part")
        partial.write_bytes(payload)
        partial.replace(self._object(key))
        return StoredFile(key, len(payload), hashlib.sha256(payload).hexdigest())

    put = write

    def sync(self, keys: Iterable[str]) -> None:
        pass  # flat objects, no folder whose entries need syncing

    def read(self, key: str) -> bytes:
        return self._object(key).read_bytes()

    def local_path(self, key: str) -> Path:
        copy = self.cache / self._object(key).name
        if not copy.is_file():
            copy.write_bytes(self.read(key))
            self.copies += 1
        return copy

    def exists(self, key: str) -> bool:
        return self._object(key).is_file()

    def delete(self, key: str) -> bool:
        (self.cache / self._object(key).name).unlink(missing_ok=True)
        try:
            self._object(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def prune_empty(self, keys: Iterable[str]) -> int:
        return 0  # flat: no folders to empty

    def keys(self) -> Iterator[str]:
        for path in self.objects.glob("*%*%*"):
            if path.suffix != ".part":
                yield path.name.replace("%", "/")

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.objects).free

    def clear_partial_files(self, *, older_than: float | None = None) -> int:
        leftovers = list(self.objects.glob("*.part"))
        for path in leftovers:
            path.unlink()
        return len(leftovers)


def test_intake_assembly_and_recovery_go_through_the_store_interface(manual_node, tmp_path):
    store = PrefixedObjectStore(tmp_path / "elsewhere")
    node = manual_node(store=store)
    uid, planes = study()
    sent = [ds for group in planes for ds in group]
    send(node, sent)
    advance(node, 2)
    [record] = assemblies(node)
    assert record.outcome == "assembled" and set(record.summary["planes"]) == {"sagittal", "coronal", "axial"}
    with node.session_factory() as session:
        paths = set(session.scalars(select(Instance.file_path)))
    assert paths == set(store.keys()) and all(path.startswith(f"ortho/{uid}/") for path in paths)
    assert store.copies == len(paths)  # the assembler read every slice through local_path
    data_dir = node.settings.data_dir
    assert not [p for p in data_dir.rglob("*") if p.is_file() and p.suffix == ".dcm"]

    # An instance stored and acknowledged just before a crash, its row never written: the recovery scan finds it
    late = copy.deepcopy(sent[0])
    late.SOPInstanceUID = generate_uid()
    late.save_as(tmp_path / "late.dcm", enforce_file_format=True)
    key = store.key(uid, late.SeriesInstanceUID, late.SOPInstanceUID)
    store.write(key, (tmp_path / "late.dcm").read_bytes())
    assert node.recovery.recover_unrecorded_files() == 1
    assert node.catalog.stored_path(late.SOPInstanceUID) == key
    assert node.recovery.recover_unrecorded_files() == 0


def test_a_new_series_folder_has_its_parents_fsynced_by_whoever_syncs_it_first(tmp_path, monkeypatch):
    # Two receivers' threads: the one that finds the folder made must not acknowledge before its link is durable.
    from ortho_node.intake import storage

    synced: list[Path] = []
    real = storage.fsync_folder
    monkeypatch.setattr(storage, "fsync_folder", lambda path: (synced.append(Path(path)), real(path)))
    store = storage.LocalInstanceStore(tmp_path)
    study_uid, series_uid = generate_uid(), generate_uid()
    first, second = (store.key(study_uid, series_uid, generate_uid()) for _ in range(2))
    store.put(first, b"one")  # made the folder, not synced yet
    store.put(second, b"two")  # found it made
    store.sync([second])
    series = store.data_dir / second
    assert set(synced) == {series.parent, series.parent.parent, series.parent.parent.parent}
    synced.clear()
    store.sync([first])  # the parents are durable now: only the series folder again
    assert synced == [series.parent]
