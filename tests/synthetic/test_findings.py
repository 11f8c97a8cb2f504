"""Each finding changes the image inside its own region, and the labels CSV reports exactly what was injected."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest

from ortho_node.labels import DIAGNOSIS_LABELS, Joint
from ortho_node.synthetic import DomainRandomization, generate_study
from ortho_node.app.cli.synth import add_arguments, run

from .conftest import FAST

CASES = [(joint, label) for joint, labels in DIAGNOSIS_LABELS.items() for label in labels]


@pytest.fixture(scope="module")
def normals() -> dict[Joint, object]:
    """Normal study per joint (seed 41), generated on first use and shared by the module."""
    return {}


@pytest.mark.parametrize(("joint", "label"), CASES)
def test_finding_changes_the_image_inside_its_region(joint, label, normals):
    if joint not in normals:
        normals[joint] = generate_study(joint, 41, findings=None, **FAST)
    normal = normals[joint]
    sick = generate_study(joint, 41, findings=[label], **FAST)
    assert sick.diagnosis[label] == 1 and sum(sick.diagnosis.values()) == 1
    changed_inside, changed_total = 0.0, 0.0
    for before, after in zip(normal.series, sick.series):
        diff = np.abs(after.pixels.astype(np.float64) - before.pixels.astype(np.float64))
        g = after.geometry
        margin = g.slice_thickness / 2 + 3 * g.pixel_spacing + FAST["scene_spacing"]
        inside = sick.finding_mask(label, after, margin=margin)
        changed_inside += diff[inside].sum()
        changed_total += diff.sum()
    assert changed_inside > 0, f"{label} left the image unchanged"
    # Partial volume and blur spread a change a little past the region's box (the margin), no further.
    assert changed_inside / changed_total > 0.98


def _cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_labels_csv_matches_injected_findings(tmp_path):
    args = _cli_args("--joint", "knee", "--n", "3", "--seed", "50", "--out", str(tmp_path),
                     "--findings", "random", "--format", "nifti", "--scene-spacing", "1.5")
    assert run(args) == 0
    with (tmp_path / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["seed"]) for r in rows] == [50, 51, 52]
    for row in rows:
        study = generate_study("knee", int(row["seed"]), findings="random", scene_spacing=1.5,
                               domain=DomainRandomization(matrices=(256,)), planes=())
        assert {k: int(row[k]) for k in DIAGNOSIS_LABELS[Joint.KNEE]} == study.diagnosis
        assert row["study_instance_uid"] == study.study_uid


def test_explicit_findings_list_in_cli(tmp_path):
    args = _cli_args("--joint", "ankle", "--n", "1", "--seed", "60", "--out", str(tmp_path),
                     "--findings", "ATR,olt", "--format", "nifti", "--scene-spacing", "1.5")
    assert run(args) == 0
    row = next(csv.DictReader((tmp_path / "labels.csv").open()))
    assert {k: row[k] for k in DIAGNOSIS_LABELS[Joint.ANKLE]} == {"ATFL": "0", "CFL": "0", "ATR": "1", "OLT": "1"}
    assert (tmp_path / "ankle_000060" / "nifti" / "sagittal_labels.nii.gz").exists()
