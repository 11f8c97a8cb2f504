"""Fixtures for the result objects: a small synthetic knee study, its prediction and built objects."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.reports.study_factory import SyntheticKnee, make_knee_study

DCIODVFY = Path("/usr/bin/dciodvfy")


@pytest.fixture(scope="module")
def knee(tmp_path_factory) -> SyntheticKnee:
    return make_knee_study(tmp_path_factory.mktemp("knee"))


@pytest.fixture(scope="module")
def results_settings():
    from ortho_node.config import load_settings

    return load_settings(environ={}, overrides={"results.institution_name": "Test Hospital"})


@pytest.fixture(scope="module")
def result_objects(knee, results_settings):
    from reports.results import build_results

    return build_results(knee.prediction, results_settings).datasets


@pytest.fixture(scope="module")
def result_files(result_objects, tmp_path_factory) -> list[Path]:
    from reports.results import write_result_objects

    return write_result_objects(result_objects, tmp_path_factory.mktemp("results"))


def dciodvfy_errors(path: Path) -> list[str]:
    if not DCIODVFY.exists():
        pytest.fail("dciodvfy missing: install the Debian package dicom3tools")
    if str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == DeflatedExplicitVRLittleEndian:
        # This dicom3tools build reads no deflated files: dcmtk inflates a copy (lossless) to validate.
        inflated = path.with_name(path.stem + ".inflated")
        subprocess.run(["/usr/bin/dcmconv", "+te", str(path), str(inflated)], check=True)
        path = inflated
    output = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True)
    return [line for line in (output.stdout + output.stderr).splitlines() if line.startswith("Error")]
