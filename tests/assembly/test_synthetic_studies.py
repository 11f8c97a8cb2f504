"""Issue 4: generated studies, sent through the node, are assembled into the right joint, laterality, planes."""

from __future__ import annotations

import pytest

from ortho_node.labels import MODEL_PLANES
from ortho_node.synthetic import SequencePreset, generate_study
from ortho_node.synthetic.dicom_writer import instances
from tests.assembly.factory import advance, assemblies, send
from tests.synthetic.conftest import FAST


@pytest.mark.parametrize("joint, seed", [("knee", 3), ("ankle", 4), ("shoulder", 5)])
def test_generated_study_assembled_into_joint_laterality_and_planes(manual_node, joint, seed):
    node = manual_node()
    generated = generate_study(joint, seed, findings=None, **FAST)
    send(node, [ds for series in generated.series for ds in instances(generated, series)])
    advance(node, 2)
    [record] = assemblies(node)
    assert (record.outcome, record.joint, record.laterality) == ("assembled", joint, generated.laterality)
    expected = {s.plane.value: s.uid for s in generated.series}
    chosen = {plane: entry["series_instance_uid"] for plane, entry in record.summary["planes"].items()}
    assert chosen == expected and set(chosen) == {p.value for p in MODEL_PLANES}


def test_dess_study_assembled_with_its_contrast_read_as_t2_star_fat_suppressed(manual_node):
    node = manual_node()
    generated = generate_study("knee", 6, findings=None, weighting=SequencePreset.DESS_WE, **FAST)
    send(node, [ds for series in generated.series for ds in instances(generated, series)])
    advance(node, 2)
    [record] = assemblies(node)
    assert record.outcome == "assembled"
    assert {plane: entry["contrast"] for plane, entry in record.summary["planes"].items()} == {
        p.value: "T2* FS" for p in MODEL_PLANES}
