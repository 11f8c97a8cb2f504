"""MR appearance: pulse-sequence parameters and each tissue's signal, plus bias field, texture and Rician noise.

Signals follow the spin-echo equation S = PD (1 - exp(-TR/T1)) exp(-TE/T2) for a water and a fat compartment;
fat suppression scales the fat compartment down. Because TE/TR are sampled within protocol ranges and every
tissue gets a random gain, contrast varies realistically and the header's TE/TR match the image.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np
from scipy import ndimage

from ortho_node.synthetic.domain import DomainRandomization
from ortho_node.synthetic.structures import Signal


class SequencePreset(str, enum.Enum):
    """A prescribed sequence: its weighting (``assembly.contrast.Weighting``) with or without fat suppression."""

    PD_FS = "PD_FS"
    T1 = "T1"
    T2 = "T2"
    T2_FS = "T2_FS"

    @property
    def fat_suppressed(self) -> bool:
        return self.value.endswith("_FS")

    @property
    def label(self) -> str:
        """As in a series description: 'PD FS', 'T1', 'T2 FS'."""
        return self.value.replace("_", " ")


@dataclasses.dataclass(frozen=True)
class SequenceParams:
    """What the scanner did: goes to the DICOM header and determines the contrast."""

    weighting: SequencePreset
    field_strength: float
    repetition_time: float  # ms
    echo_time: float  # ms
    echo_train_length: int
    fat_residual: float  # fraction of fat signal left after suppression (1.0 without)

    @property
    def imaging_frequency(self) -> float:
        return 42.577478 * self.field_strength  # MHz, 1H


# (TR range, TE range, echo train length) per weighting for fast spin echo.
_PROTOCOL: dict[SequencePreset, tuple[tuple[float, float], tuple[float, float], int]] = {
    SequencePreset.PD_FS: ((2500.0, 4000.0), (25.0, 40.0), 8),
    SequencePreset.T1: ((450.0, 700.0), (9.0, 16.0), 3),
    SequencePreset.T2: ((3000.0, 5000.0), (70.0, 100.0), 14),
    SequencePreset.T2_FS: ((3000.0, 5000.0), (55.0, 80.0), 12),
}

# Water compartment (PD, T1 at 1.5 T, T1 at 3 T, T2 in ms) and fat fraction per appearance class.
_TISSUE: dict[Signal, tuple[float, float, float, float, float]] = {
    Signal.AIR: (0.0, 1000.0, 1000.0, 1.0, 0.0),
    Signal.CORTEX: (0.04, 1000.0, 1200.0, 1.0, 0.0),
    Signal.MARROW: (0.7, 800.0, 1000.0, 40.0, 0.88),
    Signal.MARROW_OEDEMA: (0.95, 1200.0, 1500.0, 90.0, 0.35),
    Signal.CARTILAGE: (0.8, 1000.0, 1250.0, 42.0, 0.0),
    Signal.FIBROCARTILAGE: (0.4, 700.0, 900.0, 9.0, 0.0),
    Signal.LIGAMENT: (0.35, 700.0, 900.0, 11.0, 0.0),
    Signal.DEGENERATE: (0.8, 1000.0, 1300.0, 60.0, 0.05),
    Signal.MUSCLE: (0.7, 900.0, 1400.0, 33.0, 0.03),
    Signal.FAT: (0.0, 1000.0, 1000.0, 1.0, 1.0),
    Signal.FLUID: (1.0, 3000.0, 3500.0, 700.0, 0.0),
    Signal.SKIN: (0.55, 800.0, 1000.0, 30.0, 0.3),
    Signal.VESSEL: (0.12, 1500.0, 1800.0, 150.0, 0.0),
    Signal.SOFT_OEDEMA: (0.95, 2000.0, 2500.0, 180.0, 0.3),
}
_FAT = (1.0, 280.0, 370.0, 130.0)  # fat's apparent T2 in fast spin echo is long (J-coupling)
_TEXTURE = {Signal.MARROW: 1.0, Signal.MARROW_OEDEMA: 0.8, Signal.MUSCLE: 0.6, Signal.FAT: 0.3,
            Signal.CARTILAGE: 0.3, Signal.SKIN: 0.3}


def sample_sequence(weighting: SequencePreset, field_strength: float, rng: np.random.Generator) -> SequenceParams:
    (tr_lo, tr_hi), (te_lo, te_hi), etl = _PROTOCOL[weighting]
    return SequenceParams(
        weighting=weighting, field_strength=field_strength,
        repetition_time=float(round(rng.uniform(tr_lo, tr_hi), -1)), echo_time=float(round(rng.uniform(te_lo, te_hi), 1)),
        echo_train_length=etl,
        fat_residual=float(rng.uniform(0.03, 0.12)) if weighting.fat_suppressed else 1.0,
    )


def _spin_echo(pd: float, t1: float, t2: float, seq: SequenceParams) -> float:
    return pd * (1.0 - np.exp(-seq.repetition_time / t1)) * np.exp(-seq.echo_time / t2)


def tissue_signal(seq: SequenceParams, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Signal per :class:`Signal` value (float32, 256 entries), brightest tissue about 1."""
    high_field = seq.field_strength >= 2.0
    fat = _spin_echo(_FAT[0], _FAT[2] if high_field else _FAT[1], _FAT[3], seq) * seq.fat_residual
    lut = np.zeros(256, dtype=np.float32)
    for tissue, (pd, t1_low, t1_high, t2, fat_fraction) in _TISSUE.items():
        water = _spin_echo(pd, t1_high if high_field else t1_low, t2, seq)
        gain = float(np.exp(rng.normal(0.0, jitter))) if jitter > 0 else 1.0
        lut[int(tissue)] = gain * ((1.0 - fat_fraction) * water + fat_fraction * fat)
    return lut / lut.max()


def texture_lut(amplitude: float) -> np.ndarray:
    lut = np.zeros(256, dtype=np.float32)
    for tissue, weight in _TEXTURE.items():
        lut[int(tissue)] = amplitude * weight
    return lut


def bias_field(world: tuple[np.ndarray, np.ndarray, np.ndarray], centre: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """exp of a quadratic polynomial in world position (coil sensitivity), normalised over ~150 mm."""
    u, v, w = ((c - float(m)) / 150.0 for c, m in zip(world, centre))
    terms = (u, v, w, u * u, v * v, w * w, u * v, v * w, u * w)
    return np.exp(sum(float(c) * t for c, t in zip(coeffs, terms))).astype(np.float32)


def sample_bias_coeffs(rng: np.random.Generator, dr: DomainRandomization) -> np.ndarray:
    # Nine terms of up to a third of the strength each keep the field within about +-strength over the FOV.
    return rng.uniform(-1.0, 1.0, 9) * dr.bias_strength / 3.0


def finish_image(image: np.ndarray, signal_nn: np.ndarray, rng: np.random.Generator, dr: DomainRandomization,
                 snr: float, blur_px: float) -> np.ndarray:
    """Texture, in-plane blur and Rician noise on a [slices, rows, cols] float image (in place where possible)."""
    if dr.texture > 0:
        amplitude = texture_lut(dr.texture)[signal_nn]
        image *= 1.0 + amplitude * rng.standard_normal(image.shape, dtype=np.float32)
    image = ndimage.gaussian_filter(image, sigma=(0.0, blur_px, blur_px), mode="nearest")
    sigma = np.float32(1.0 / snr)
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)
