"""Sequence presets: the DESS gradient echo (tissue contrast, header, how the node reads it) and the fast spin
echo presets unchanged by it."""

from __future__ import annotations

import hashlib
import subprocess

import numpy as np
import pytest
from scipy import ndimage

from ortho_node.assembly.contrast import SequenceFacts, Weighting, characterize
from ortho_node.labels import Joint
from ortho_node.synthetic import SequencePreset, generate_study
from ortho_node.synthetic.acquisition import sample_nearest
from ortho_node.synthetic.dicom_writer import instances
from ortho_node.synthetic.render import sample_sequence, tissue_signal
from ortho_node.synthetic.structures import Signal

from .conftest import FAST

#: sha256 (first 16 hex digits) of every series' pixels, computed with the code before the DESS preset existed:
#: a new preset must leave the others bit for bit. (The knee's entries went with its new anatomy.)
BEFORE_DESS = {
    ("shoulder", 3, None): "ea0b7a2ac7364f45",
}


@pytest.mark.parametrize("joint, seed, weighting", list(BEFORE_DESS))
def test_existing_presets_and_protocols_render_as_before(joint, seed, weighting):
    study = generate_study(joint, seed, weighting=weighting, **FAST)
    digest = hashlib.sha256()
    for series in study.series:
        digest.update(series.pixels.tobytes())
    assert digest.hexdigest()[:16] == BEFORE_DESS[joint, seed, weighting]


@pytest.fixture(scope="module")
def dess():
    return generate_study(Joint.KNEE, 7, weighting=SequencePreset.DESS_WE, findings=None, keep_scene=True, **FAST)


def test_dess_signal_model_orders_the_tissues():
    for field in (1.5, 3.0):
        seq = sample_sequence(SequencePreset.DESS_WE, field, np.random.default_rng(1))
        lut = tissue_signal(seq, np.random.default_rng(1), jitter=0.0)
        s = {tissue: float(lut[int(tissue)]) for tissue in Signal}
        assert s[Signal.FLUID] == 1.0 > s[Signal.CARTILAGE] > 1.15 * s[Signal.MUSCLE]
        # menisci, ligaments, water-excited marrow and fat all dark; nothing from the cortex
        assert max(s[Signal.FIBROCARTILAGE], s[Signal.LIGAMENT], s[Signal.MARROW]) < 0.3 * s[Signal.CARTILAGE]
        assert s[Signal.FAT] < s[Signal.MARROW] and s[Signal.CORTEX] < 0.01


def _core_means(study, series) -> dict[Signal, float]:
    """Mean pixel per appearance class of the scene, over voxels whose in-plane neighbours share the class."""
    [signal] = sample_nearest(study.scene, (study.scene.signal,), series.geometry)
    means = {}
    for tissue in (Signal.FLUID, Signal.CARTILAGE, Signal.MUSCLE, Signal.MARROW, Signal.FAT, Signal.FIBROCARTILAGE,
                   Signal.LIGAMENT):
        core = ndimage.binary_erosion(signal == tissue, structure=np.ones((1, 3, 3), bool))
        if core.sum() >= 30:
            means[tissue] = float(series.pixels[core].mean())
    return means


def test_dess_renders_bright_cartilage_and_fluid_dark_fat_marrow_and_menisci(dess):
    for series in dess.series:
        m = _core_means(dess, series)
        assert m[Signal.CARTILAGE] > 1.05 * m[Signal.MUSCLE], series.description
        assert m[Signal.CARTILAGE] > 1.5 * max(m[Signal.MARROW], m[Signal.FAT]), series.description
        assert m[Signal.MUSCLE] > max(m[Signal.FIBROCARTILAGE], m[Signal.LIGAMENT]), series.description
        if Signal.FLUID in m:
            assert m[Signal.FLUID] > m[Signal.CARTILAGE], series.description  # thin pockets: partial volume


def test_dess_header_is_a_water_excited_gradient_echo_the_node_reads_as_t2_star_fs(dess):
    for series in dess.series:
        ds = instances(dess, series)[0]
        assert ds.SeriesDescription.endswith("DESS WE") and ds.ScanningSequence == "GR"
        assert list(ds.SequenceVariant) == ["SS", "TRSS"] and ds.ScanOptions == "WE"
        assert ds.EchoTrainLength == 1 and 22 <= float(ds.FlipAngle) <= 28
        assert 14 <= float(ds.RepetitionTime) <= 20 and 4 <= float(ds.EchoTime) <= 7
        contrast = characterize(SequenceFacts(ds.SeriesDescription, ds.ProtocolName, ds.ScanningSequence,
                                              ds.ScanOptions, float(ds.EchoTime), float(ds.RepetitionTime), None,
                                              float(ds.FlipAngle)))
        assert (contrast.weighting, contrast.fat_suppressed, contrast.label) == (Weighting.T2_STAR, True, "T2* FS")
        # Without the description the water excitation is still seen (the weighting then follows the timing).
        assert characterize(SequenceFacts(scanning_sequence="GR", scan_options="WE", echo_time=5.0,
                                          repetition_time=17.0, flip_angle=25.0)).fat_suppressed


def test_dess_instances_pass_dciodvfy(dess, dciodvfy, tmp_path):
    for series in dess.series:
        path = tmp_path / f"{series.plane.value}.dcm"
        instances(dess, series)[0].save_as(path, enforce_file_format=True)
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
        assert not errors, f"{path.name}: {errors}"


def test_pd_without_fat_suppression_renders_fat_and_marrow_bright_and_reads_as_pd():
    # The training mix's realistic series without fat suppression (issue 21): fat and fatty marrow above muscle,
    # where PD FS puts them below it.
    for weighting, suppressed in ((SequencePreset.PD, False), (SequencePreset.PD_FS, True)):
        study = generate_study(Joint.KNEE, 7, weighting=weighting, findings=None, keep_scene=True, **FAST)
        series = study.series[0]
        m = _core_means(study, series)
        assert (m[Signal.MARROW] < m[Signal.MUSCLE]) is suppressed and (m[Signal.FAT] < m[Signal.MUSCLE]) is suppressed
        if not suppressed:
            assert min(m[Signal.MARROW], m[Signal.FAT]) > 1.5 * m[Signal.MUSCLE]
        ds = instances(study, series)[0]
        contrast = characterize(SequenceFacts(ds.SeriesDescription, ds.ProtocolName, ds.ScanningSequence,
                                              ds.ScanOptions, float(ds.EchoTime), float(ds.RepetitionTime), None,
                                              float(ds.FlipAngle)))
        assert (contrast.weighting, contrast.fat_suppressed) == (Weighting.PD, suppressed), ds.SeriesDescription
