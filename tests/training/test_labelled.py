"""Issue 26: labelled studies as departments keep them (plain DICOM + findings CSV + DICOM-SEG / NIfTI masks),
read through the node's own assembly; every malformed input named in one error; patient-level splits."""

from __future__ import annotations

import math
import shutil

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

from ortho_node.labels import UNLABELLED, Joint, Plane
from ortho_node.model.preprocessing import PreprocessSpec
from ortho_node.training.labelled import LabelledDataError, patient_folds, patient_split, read_labelled, task_data
from tests.training.labelled_factory import export_study, findings_row, knee, seg_of, write_csv

SEEDS = (5, 6, 7)
PATIENTS = {5: "PAT-ONE", 6: "PAT-ONE", 7: "PAT-TWO"}  # two studies of one patient


@pytest.fixture(scope="module")
def department(tmp_path_factory):
    root = tmp_path_factory.mktemp("department")
    studies, exported = {}, {}
    for seed in SEEDS:
        studies[seed] = knee(seed)
        exported[seed] = export_study(studies[seed], root / "dicom", patient_id=PATIENTS[seed])
    (root / "masks").mkdir()
    for seed in SEEDS:
        series = next(s for s in studies[seed].series if s.plane is Plane.SAGITTAL)
        sparse = range(0, len(series.labels), 2) if seed == 6 else None  # every other slice labelled
        seg_of(exported[seed]["sagittal"], series.labels, slices=sparse).save_as(root / "masks" / f"seg-{seed}.dcm")
    rows = [findings_row(studies[5]), findings_row(studies[6], blank=("ACL", "PCL")), findings_row(studies[7])]
    write_csv(root / "labels.csv", rows)
    return root, studies, exported


def _source_index(volume, series) -> dict[int, int]:
    """Writer slice k -> its index in the assembled volume (assembly orders slices along the normal)."""
    order = {uid: i for i, uid in enumerate(volume.geometry.sop_instance_uids)}
    return {k: order[generate_uid(entropy_srcs=[series.uid, str(k)])] for k in range(len(series.labels))}


def test_studies_findings_and_seg_masks_come_through_the_nodes_assembly(department):
    root, studies, _ = department
    labelled = {s.uid: s for s in read_labelled(root / "dicom", root / "labels.csv", Joint.KNEE,
                                                masks=root / "masks")}
    assert set(labelled) == {studies[seed].study_uid for seed in SEEDS}
    for seed in SEEDS:
        item, truth = labelled[studies[seed].study_uid], studies[seed]
        assert set(item.study.planes) == {Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL}
        series = next(s for s in truth.series if s.plane is Plane.SAGITTAL)
        mask, where = item.masks[Plane.SAGITTAL], _source_index(item.study.planes[Plane.SAGITTAL], series)
        labelled_slices = range(0, len(series.labels), 2) if seed == 6 else range(len(series.labels))
        for k in labelled_slices:
            assert np.array_equal(mask[where[k]], series.labels[k]), (seed, k)
        assert item.acquisition.manufacturer != "unknown" and item.acquisition.field_strength.endswith(" T")
    assert labelled[studies[6].study_uid].findings["ACL"] is None
    assert labelled[studies[5].study_uid].findings == {k: int(v) for k, v in studies[5].diagnosis.items()}
    keys = {seed: labelled[studies[seed].study_uid].patient_key for seed in SEEDS}
    assert keys[5] == keys[6] != keys[7] and "PAT" not in keys[5]  # hashed, not the PatientID


def test_patient_splits_never_put_a_patient_on_both_sides(department):
    root, studies, _ = department
    labelled = read_labelled(root / "dicom", root / "labels.csv", Joint.KNEE, masks=root / "masks")
    for seed in range(6):
        train, val = patient_split(labelled, 0.5, seed)
        assert len(train) + len(val) == 3 and len(val) in (1, 2)
        assert not {labelled[i].patient_key for i in train} & {labelled[i].patient_key for i in val}
    folds = patient_folds(labelled, 2, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="at most 2"):
        patient_folds(labelled, 3, seed=0)
    data = task_data(labelled, Joint.KNEE, PreprocessSpec(depth=16, size=64), segmentation=True)
    assert data.images.shape == (3, 3, 1, 16, 64, 64) and data.segmentation.shape == (3, 3, 16, 64, 64)
    blank = [s.uid for s in labelled].index(studies[6].study_uid)
    assert math.isnan(float(data.diagnosis[blank, 0])) and not np.isnan(data.diagnosis[blank, 2:].numpy()).any()
    assert int(data.segmentation[:, 0].max()) > 0  # sagittal masks on the model grid


def test_every_malformed_input_is_named_in_one_error(department, tmp_path):
    root, studies, exported = department
    masks = tmp_path / "masks"
    shutil.copytree(root / "masks", masks)
    stranger = knee(9)  # its SEG references a series that is not in the folder
    series9 = next(s for s in stranger.series if s.plane is Plane.CORONAL)
    from ortho_node.synthetic.dicom_writer import instances

    seg_of(instances(stranger, series9), series9.labels).save_as(masks / "stranger.dcm")
    series5 = next(s for s in studies[5].series if s.plane is Plane.CORONAL)
    two = np.where(np.isin(series5.labels, (1, 2)), series5.labels, 0)  # femur and tibia, the tibia misnamed
    seg_of(exported[5]["coronal"], two, names=["femur", "meniscus of the moon"]).save_as(
        masks / "unknown-segment.dcm")
    axial7 = next(s for s in studies[7].series if s.plane is Plane.AXIAL)
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 3), np.uint8), np.eye(4)), masks / f"{axial7.uid}.nii.gz")
    rows = [findings_row(studies[5]), findings_row(studies[6]) | {"MM": "yes"}, findings_row(studies[7]),
            {"StudyInstanceUID": "1.2.3.4.5", "ACL": "1"}]
    labels = write_csv(tmp_path / "labels.csv", rows,
                       columns=["StudyInstanceUID", "ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU", "Meniscus"])
    with pytest.raises(LabelledDataError) as raised:
        read_labelled(root / "dicom", labels, Joint.KNEE, masks=masks)
    problems = raised.value.problems
    expected = ["unknown label column 'Meniscus'", "line 3 column MM: 'yes' is not 0, 1 or blank",
                "StudyInstanceUID 1.2.3.4.5 is not a study in",
                f"stranger.dcm: references series {series9.uid}, which is not in the folder",
                "unknown-segment.dcm: segment 2 'meniscus of the moon' is not a structure",
                f"{axial7.uid}.nii.gz: mask grid (3, 10, 10)"]
    for text in expected:
        assert sum(text in p for p in problems) == 1, (text, problems)
    assert len(problems) == len(expected)
    assert str(raised.value).startswith(f"{len(expected)} problem(s) in the labelled data:")


@pytest.mark.parametrize("task", ["knee-dx", "knee-seg"])
def test_train_finetune_on_plain_dicom_csv_and_segs(department, tmp_path, task):
    from ortho_node.app.cli.main import main
    from ortho_node.model.system import load_system, read_system_card

    root, studies, _ = department
    out = tmp_path / "model"
    argv = ["train", "finetune", "--task", task, "--data", str(root / "dicom"), "--labels", str(root / "labels.csv"),
            "--masks", str(root / "masks"), "--out", str(out), "--epochs", "1", "--batch-size", "2",
            "--val-fraction", "0.5", "--device", "cpu", "--seed", "1"]
    assert main(argv) == 0
    card = read_system_card(out)
    split = card.training[f"{task}/split"]
    assert split.startswith("patient-level, seed 1: ")
    counts = (card.metrics[f"{task}/train_studies"], card.metrics[f"{task}/val_studies"])
    assert sorted(counts) == [1, 2]  # PAT-ONE's two studies stay together
    assert f"{counts[0]} studies of 1 patients / {counts[1]} of 1" in split
    metric = "dice/femur" if task == "knee-seg" else "auc/MM"
    assert f"{task}/val/{metric}" in card.metrics
    load_system(out)  # weights and card consistent


def test_train_finetune_refuses_malformed_inputs_naming_them(department, tmp_path, caplog):
    from ortho_node.app.cli.main import main

    root, studies, _ = department
    labels = write_csv(tmp_path / "labels.csv", [findings_row(studies[5]) | {"Effusion": "1"}],
                       columns=["StudyInstanceUID", "ACL", "Effusion"])
    argv = ["train", "finetune", "--task", "knee-dx", "--data", str(root / "dicom"), "--labels", str(labels),
            "--out", str(tmp_path / "model"), "--device", "cpu"]
    assert main(argv) == 2
    message = caplog.text
    assert "unknown label column 'Effusion'" in message
    assert f"study {studies[6].study_uid}: neither a row in labels.csv nor a mask" in message
    assert not (tmp_path / "model").exists()


def test_slices_a_sparse_seg_leaves_out_are_unlabelled_not_background(department):
    root, studies, _ = department
    labelled = {s.uid: s for s in read_labelled(root / "dicom", root / "labels.csv", Joint.KNEE,
                                                masks=root / "masks")}
    series = next(s for s in studies[6].series if s.plane is Plane.SAGITTAL)
    mask = labelled[studies[6].study_uid].masks[Plane.SAGITTAL]
    where = _source_index(labelled[studies[6].study_uid].study.planes[Plane.SAGITTAL], series)
    for k in range(1, len(series.labels), 2):
        assert (mask[where[k]] == UNLABELLED).all(), k
    full = labelled[studies[5].study_uid].masks[Plane.SAGITTAL]
    assert not (full == UNLABELLED).any()
    data = task_data([labelled[studies[6].study_uid]], Joint.KNEE, PreprocessSpec(depth=16, size=64),
                     segmentation=True)
    assert (data.stacks.labels == UNLABELLED).any()  # carried onto the model grid for the loss to leave out


def test_studies_listed_from_the_nodes_archive_read_as_the_exported_folder_does(department, manual_node, tmp_path,
                                                                                caplog):
    from pydicom import dcmread
    from sqlalchemy import select, update

    from ortho_node.app.cli.main import main
    from ortho_node.clock import utcnow
    from ortho_node.db.models import Instance, Series, Study
    from ortho_node.training.archive import read_uids, study_files
    from tests.assembly.factory import send

    root, studies, _ = department
    node = manual_node()  # on a manual clock: received and catalogued, never analysed
    send(node, [dcmread(path) for path in sorted((root / "dicom").rglob("*")) if path.is_file()])
    listed = tmp_path / "uids.txt"
    listed.write_text("# the department's validation list\n" + "\n".join(
        f"{studies[seed].study_uid}  # seed {seed}" for seed in SEEDS) + "\n\n")
    assert read_uids(listed) == [studies[seed].study_uid for seed in SEEDS]
    from_archive = {s.uid: s for s in read_labelled(study_files(read_uids(listed), node.settings),
                                                    root / "labels.csv", Joint.KNEE, masks=root / "masks")}
    from_folder = {s.uid: s for s in read_labelled(root / "dicom", root / "labels.csv", Joint.KNEE,
                                                   masks=root / "masks")}
    assert set(from_archive) == set(from_folder) == {studies[seed].study_uid for seed in SEEDS}
    for uid, item in from_archive.items():
        assert item.findings == from_folder[uid].findings and item.patient_key == from_folder[uid].patient_key
        assert all(path.is_relative_to(node.settings.data_dir) for path in item.sources.values())
        assert np.array_equal(item.masks[Plane.SAGITTAL], from_folder[uid].masks[Plane.SAGITTAL])

    purged = studies[7].study_uid
    with node.session_factory.begin() as session:  # as retention leaves a purged study's rows
        series = select(Series.id).join(Study).where(Study.study_instance_uid == purged)
        session.execute(update(Instance).where(Instance.series_id.in_(series)).values(purged_at=utcnow()))
    unknown = "1.2.826.0.1.3680043.8.498.999"
    with pytest.raises(LabelledDataError) as error:
        study_files([studies[5].study_uid, purged, unknown, "../x"], node.settings)
    assert set(error.value.problems) == {f"study {purged}: its instances were purged by retention",
                                         f"study {unknown}: not in the node's archive",
                                         "'../x': StudyInstanceUID is not a valid DICOM UID"}
    listed.write_text(f"{studies[5].study_uid}\n{unknown}\n")
    argv = ["train", "finetune", "--task", "knee-dx", "--archive", str(listed), "--labels", str(root / "labels.csv"),
            "--data-dir", str(node.settings.data_dir), "--out", str(tmp_path / "model"), "--device", "cpu"]
    assert main(argv) == 2 and f"study {unknown}: not in the node's archive" in caplog.text
    assert main(argv[:6] + argv[8:]) == 2 and "--archive needs --labels" in caplog.text
    assert not (tmp_path / "model").exists()

