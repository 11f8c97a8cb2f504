"""One Orthanc and one ``ortho-node serve`` (bundled model, CPU) for the folder, and the studies Orthanc pushes
to the node: a three-plane synthetic knee, the real GE knee series (sagittal only), an ankle and a shoulder.

Every study is uploaded and pushed once, up front, so the node works on them while the tests wait for theirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from ortho_node.config import BUNDLED_MODEL
from ortho_node.synthetic import DomainRandomization, SyntheticStudy, generate_study
from ortho_node.synthetic.dicom_writer import instances
from tests.conftest import GE_SERIES
from tests.end_to_end.round_trip import RoundTrip, dataset_bytes
from tests.reports.orthanc import ORTHANC

#: 1 mm scene and 256 matrices (as tests/synthetic): the node's code paths at a fraction of the cost.
FAST = {"scene_spacing": 1.0, "domain": DomainRandomization(matrices=(256,), pixel_mm=(0.3, 0.7))}


@dataclass(frozen=True)
class Pushed:
    synthetic: dict[str, SyntheticStudy]  # joint -> study
    ge_study_uid: str
    model_name: str  # the bundled model card's
    model_version: str


@pytest.fixture(scope="package")
def bundled_model() -> tuple[str, str]:
    """(name, version) of the bundled model card, read before the node loads the model."""
    card = json.loads((BUNDLED_MODEL / "model_card.json").read_text())
    return card["name"], card["version"]


@pytest.fixture(scope="package")
def round_trip(tmp_path_factory, bundled_model):
    if not ORTHANC.exists():
        pytest.fail("Orthanc missing: install the Debian packages orthanc and orthanc-dicomweb")
    trip = RoundTrip(tmp_path_factory.mktemp("round-trip"))
    yield trip
    trip.stop()


@pytest.fixture(scope="package")
def pushed(round_trip, bundled_model) -> Pushed:
    # The GE series first: it waits for the long timeout (its coronal and axial planes never come).
    round_trip.push(round_trip.upload(path.read_bytes() for path in sorted(GE_SERIES.glob("*.dcm"))))
    ge_uid = _study_uid(sorted(GE_SERIES.glob("*.dcm"))[0])
    synthetic = {}
    for joint, seed in (("knee", 31), ("ankle", 32), ("shoulder", 33)):
        study = generate_study(joint, seed, **FAST)
        payloads = (dataset_bytes(ds) for series in study.series for ds in instances(study, series))
        round_trip.push(round_trip.upload(payloads))
        synthetic[joint] = study
    return Pushed(synthetic, ge_uid, *bundled_model)


def _study_uid(path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
