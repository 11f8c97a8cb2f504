from __future__ import annotations

import numpy as np

from ortho_node.labels import DIAGNOSIS_LABELS, KNEE_STRUCTURES, Joint
from ortho_node.synthetic.findings import registry
from ortho_node.synthetic.structures import Structure, ground_truth_lut, structure_names


def test_knee_label_values_are_the_shared_segmentation_classes():
    for value, name in enumerate(KNEE_STRUCTURES[1:], start=1):
        words = Structure(value).name.lower().replace("_", " ")
        expanded = {"acl": "anterior cruciate ligament", "pcl": "posterior cruciate ligament"}.get(words, words)
        assert expanded == name
    assert structure_names(Joint.KNEE) == KNEE_STRUCTURES


def test_extra_tissues_are_mapped_away_in_knee_ground_truth():
    lut = ground_truth_lut(Joint.KNEE)
    assert list(lut[:12]) == list(range(12))
    assert not lut[12:].any()


def test_every_diagnosis_label_has_a_finding():
    for joint, labels in DIAGNOSIS_LABELS.items():
        assert tuple(registry(joint)) == labels
        assert len(structure_names(joint)) == int(np.count_nonzero(ground_truth_lut(joint))) + 1
