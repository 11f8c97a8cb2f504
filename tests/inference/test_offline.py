"""Issue 6: ``ortho-node infer DICOM_DIR --out DIR`` on real files: the node's assembly, then NIfTI masks on
each source grid and a findings JSON."""

from __future__ import annotations

import json

import nibabel as nib
import pydicom

from ortho_node.app.cli.main import main
from ortho_node.labels import DIAGNOSIS_LABELS, Joint
from ortho_node.synthetic import generate_study, write_study
from tests.inference.conftest import FAST


def test_infer_writes_masks_on_the_source_grid_and_findings(tmp_path, model_dir):
    generated = generate_study("knee", 31, findings=["ACL"], **FAST)
    root = write_study(generated, tmp_path / "in", "dicom")
    out = tmp_path / "out"
    assert main(["infer", str(root / "dicom"), "--out", str(out), "--model", str(model_dir), "--device", "cpu",
                 "--dicom-results"]) == 0
    document = json.loads((out / "findings.json").read_text())
    assert document["study_instance_uid"] == generated.study_uid and document["joint"] == "knee"
    assert [f["label"] for f in document["findings"]] == list(DIAGNOSIS_LABELS[Joint.KNEE])
    assert sorted(document["analysed_planes"]) == ["axial", "coronal", "sagittal"]
    for series in generated.series:
        mask = nib.load(out / f"{series.plane.value}_mask.nii.gz")
        first = pydicom.dcmread(next((root / "dicom").glob(f"*_{series.plane.value}/IM0001.dcm")))
        assert mask.shape == (first.Columns, first.Rows, series.geometry.n_slices)
    segs = [pydicom.dcmread(p) for p in out.glob("SEG_*.dcm")]
    assert sorted(str(s.ReferencedSeriesSequence[0].SeriesInstanceUID) for s in segs) == sorted(
        s.uid for s in generated.series)


def test_infer_reports_a_folder_without_dicom(tmp_path, model_dir):
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert main(["infer", str(tmp_path), "--out", str(tmp_path / "out"), "--model", str(model_dir)]) == 2
