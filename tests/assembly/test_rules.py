"""Header-level rules: orientation checks and planes, sequence characterization, assembly settings."""

from __future__ import annotations

import pytest

from ortho_node.assembly.contrast import Preference, SequenceFacts, Weighting, characterize
from ortho_node.assembly.geometry import Orientation, OrientationError
from ortho_node.config import ConfigError, load_settings
from ortho_node.labels import Plane


@pytest.mark.parametrize("values, plane", [
    ([0, 1, 0, 0, 0, -1], Plane.SAGITTAL), ([1, 0, 0, 0, 0, -1], Plane.CORONAL), ([1, 0, 0, 0, 1, 0], Plane.AXIAL),
    ([1, 0, 0, 0, 0.7071068, 0.7071068], Plane.OBLIQUE),
])
def test_plane_from_orientation(values, plane):
    assert Orientation.from_values(values).plane(40.0) is plane


@pytest.mark.parametrize("values, message", [([0, 2, 0, 0, 0, -1], "unit length"),
                                             ([0, 1, 0, 0, 0.5, -0.866], "orthogonal"), ([0, 1, 0], "6 values")])
def test_bad_orientation_rejected(values, message):
    with pytest.raises(OrientationError, match=message):
        Orientation.from_values(values)


@pytest.mark.parametrize("facts, label", [
    (SequenceFacts(series_description="SAG PD FS"), "PD FS"),
    (SequenceFacts(series_description="COR STIR"), "T2 FS"),
    (SequenceFacts(echo_time=90.0, repetition_time=4000.0, scan_options="FS"), "T2 FS"),
    (SequenceFacts(echo_time=12.0, repetition_time=550.0), "T1"),
    (SequenceFacts(scanning_sequence="IR", inversion_time=160.0, echo_time=40.0, repetition_time=5000.0), "T2 FS"),
    (SequenceFacts("SAG DESS WE", scanning_sequence="GR", scan_options="WE", echo_time=5.0, repetition_time=17.0,
                   flip_angle=25.0), "T2* FS"),
    (SequenceFacts("sag_3d_dess_we"), "T2* FS"),
    (SequenceFacts(echo_time=5.0, repetition_time=3000.0, scan_options="WE"), "PD FS"),
])
def test_sequence_characterization(facts, label):
    assert characterize(facts).label == label


def test_preference_ranks_wanted_first_then_echo_time():
    preference = Preference(("PD FS", "T2 FS", "PD"))
    pd_fs, pd = characterize(SequenceFacts("PD FS")), characterize(SequenceFacts(echo_time=30.0, repetition_time=3000))
    assert preference.rank(pd_fs) < preference.rank(pd)
    assert characterize(SequenceFacts(echo_time=8.0, repetition_time=500.0, scanning_sequence="GR",
                                      flip_angle=70)).weighting is Weighting.T1


@pytest.mark.parametrize("variable, value, message", [
    ("ORTHO_NODE_ASSEMBLY_KNEE_PLANES", "sagittal,oblique", "not a plane"),
    ("ORTHO_NODE_ASSEMBLY_PREFERRED_CONTRASTS", "PD FS,FLAIR", "not a contrast"),
    ("ORTHO_NODE_ASSEMBLY_UNKNOWN_JOINT", "hip", "must be one of"),
    ("ORTHO_NODE_SCHEDULING_LONG_TIMEOUT", "5", "at least scheduling.quiet_period"),
    ("ORTHO_NODE_SCHEDULING_CONCURRENCY", "0", "at least 1"),
])
def test_assembly_and_scheduling_settings_validated(variable, value, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={variable: value})
