"""MR appearance: pulse-sequence parameters and each tissue's signal, plus bias field, texture and Rician noise.

Signals follow the spin-echo equation S = PD (1 - exp(-TR/T1)) exp(-TE/T2) for a water and a fat compartment;
fat suppression scales the fat compartment down. Because TE/TR are sampled within protocol ranges and every
tissue gets a random gain, contrast varies realistically and the header's TE/TR match the image.

The gradient-echo preset (``DESS_WE``, double echo in steady state with water excitation) follows the
steady-state free precession equations instead (:func:`_double_echo_steady_state`): the sum of the FID (FISP)
and echo (PSIF) signals, each decayed by exp(-TE/T2*). T2* is approximated from T2 per tissue as
1/T2* = 1/T2 + 1/T2', with a reversible dephasing T2' (``_T2_PRIME``) that halves from 1.5 T to 3 T and is
short in trabecular marrow (susceptibility of the trabeculae). Water excitation leaves a small fat residual, and
its pulses' magnetisation transfer darkens muscle more than cartilage (``_MT_SIGNAL``).
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
    #: Without fat suppression: fat and fatty marrow bright (the sagittal PD of many knee protocols).
    PD = "PD"
    T1 = "T1"
    T2 = "T2"
    T2_FS = "T2_FS"
    #: Double echo in steady state with water excitation: 3D-knee-style bright cartilage and fluid, dark fat
    #: and fatty marrow. No protocol uses it by default (a contrast the model has not been trained on).
    DESS_WE = "DESS_WE"

    @property
    def fat_suppressed(self) -> bool:
        """Fat saturated (``_FS``) or water-only excitation (``_WE``)."""
        return self.value.endswith(("_FS", "_WE"))

    @property
    def gradient_echo(self) -> bool:
        return self is SequencePreset.DESS_WE

    @property
    def label(self) -> str:
        """As in a series description: 'PD FS', 'T1', 'T2 FS', 'DESS WE'."""
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
    flip_angle: float = 150.0  # degrees: the refocusing angle of the fast spin echoes, the excitation of a GRE

    @property
    def imaging_frequency(self) -> float:
        return 42.577478 * self.field_strength  # MHz, 1H


# (TR range, TE range, echo train length) per weighting for fast spin echo.
_PROTOCOL: dict[SequencePreset, tuple[tuple[float, float], tuple[float, float], int]] = {
    SequencePreset.PD_FS: ((2500.0, 4000.0), (25.0, 40.0), 8),
    SequencePreset.PD: ((2500.0, 4000.0), (25.0, 40.0), 8),
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

# Gradient echo: (TR range, TE range, flip angle range in degrees) per preset; echo train length 1.
_GRADIENT_ECHO: dict[SequencePreset, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    SequencePreset.DESS_WE: ((14.0, 20.0), (4.0, 7.0), (22.0, 28.0)),
}
#: Fraction of the fat signal water excitation leaves (a narrower range than a fat-saturation pulse's).
_WATER_EXCITATION_RESIDUAL = (0.02, 0.08)
#: Reversible dephasing T2' (ms) at 1.5 T (halved at 3 T) for 1/T2* = 1/T2 + 1/T2'; 60 ms for soft tissue and
#: fluid, short in trabecular marrow (approximate in-vivo knee T2* at 3 T: cartilage ~15-25 ms, muscle ~15-30,
#: menisci and ligaments < 10, marrow < 10).
_T2_PRIME = {Signal.MARROW: 12.0, Signal.MARROW_OEDEMA: 15.0, Signal.CORTEX: 2.0}
_T2_PRIME_DEFAULT = 60.0
#: Fat in a gradient echo: no J-coupling lengthening of its T2 (that is a fast-spin-echo effect).
_FAT_T2_GRADIENT_ECHO = 60.0
#: Free-water signal left by magnetisation transfer: the water-excitation (binomial) pulses every ~17 ms
#: saturate the macromolecular pool of muscle most, of collagen-rich cartilage, menisci and ligaments less;
#: fluid and fat have none. Approximate, chosen within reported MT ratios (muscle ~0.5, cartilage ~0.3-0.4
#: under a dedicated MT pulse; these weaker pulses saturate less).
_MT_SIGNAL = {Signal.MUSCLE: 0.8, Signal.CARTILAGE: 0.9, Signal.DEGENERATE: 0.95, Signal.FIBROCARTILAGE: 0.85,
              Signal.LIGAMENT: 0.85, Signal.SKIN: 0.85}
_TEXTURE = {Signal.MARROW: 1.0, Signal.MARROW_OEDEMA: 0.8, Signal.MUSCLE: 0.6, Signal.FAT: 0.3,
            Signal.CARTILAGE: 0.3, Signal.SKIN: 0.3}


def sample_sequence(weighting: SequencePreset, field_strength: float, rng: np.random.Generator) -> SequenceParams:
    if weighting.gradient_echo:
        return _sample_gradient_echo(weighting, field_strength, rng)
    (tr_lo, tr_hi), (te_lo, te_hi), etl = _PROTOCOL[weighting]
    return SequenceParams(
        weighting=weighting, field_strength=field_strength,
        repetition_time=float(round(rng.uniform(tr_lo, tr_hi), -1)), echo_time=float(round(rng.uniform(te_lo, te_hi), 1)),
        echo_train_length=etl,
        fat_residual=float(rng.uniform(0.03, 0.12)) if weighting.fat_suppressed else 1.0,
    )


def _sample_gradient_echo(weighting: SequencePreset, field_strength: float,
                          rng: np.random.Generator) -> SequenceParams:
    (tr_lo, tr_hi), (te_lo, te_hi), (flip_lo, flip_hi) = _GRADIENT_ECHO[weighting]
    return SequenceParams(
        weighting=weighting, field_strength=field_strength,
        repetition_time=float(round(rng.uniform(tr_lo, tr_hi), 1)),
        echo_time=float(round(rng.uniform(te_lo, te_hi), 1)), echo_train_length=1,
        fat_residual=float(rng.uniform(*_WATER_EXCITATION_RESIDUAL)),
        flip_angle=float(round(rng.uniform(flip_lo, flip_hi))),
    )


def _spin_echo(pd: float, t1: float, t2: float, seq: SequenceParams) -> float:
    return pd * (1.0 - np.exp(-seq.repetition_time / t1)) * np.exp(-seq.echo_time / t2)


def _double_echo_steady_state(pd: float, t1: float, t2: float, t2_star: float, seq: SequenceParams) -> float:
    """FID (S+) plus echo (S-) of an unbalanced steady-state gradient echo (Hanicke and Vogel 2003; Sveinsson et
    al. 2017, the qDESS signal model without diffusion):

        S+ = PD tan(a/2) [1 - (E1 - cos a)(1 - E2^2) / sqrt(p^2 - q^2)]
        S- = PD tan(a/2) [1 - (1 - E1 cos a)(1 - E2^2) / sqrt(p^2 - q^2)]
        p = 1 - E1 cos a - E2^2 (E1 - cos a),  q = E2 (1 - E1)(1 + cos a),  E1,2 = exp(-TR/T1,2)

    each read out TE from its refocusing and so decayed by exp(-TE/T2*). With E2 -> 0, S+ is the spoiled
    gradient echo sin a (1 - E1)/(1 - E1 cos a) and S- vanishes: short-T2 tissue keeps only T1 weighting.
    """
    alpha = np.deg2rad(seq.flip_angle)
    e1, e2 = np.exp(-seq.repetition_time / t1), np.exp(-seq.repetition_time / t2)
    p = 1.0 - e1 * np.cos(alpha) - e2 * e2 * (e1 - np.cos(alpha))
    q = e2 * (1.0 - e1) * (1.0 + np.cos(alpha))
    root = np.sqrt(p * p - q * q)
    fid = 1.0 - (e1 - np.cos(alpha)) * (1.0 - e2 * e2) / root
    echo = 1.0 - (1.0 - e1 * np.cos(alpha)) * (1.0 - e2 * e2) / root
    return float(pd * np.tan(alpha / 2.0) * (fid + echo) * np.exp(-seq.echo_time / t2_star))


def _t2_star(t2: float, t2_prime: float, field_strength: float) -> float:
    """1/T2* = 1/T2 + 1/T2', with ``t2_prime`` given at 1.5 T and scaled by 1.5 T / B0."""
    return 1.0 / (1.0 / t2 + field_strength / (1.5 * t2_prime))


def _gradient_echo_lut(seq: SequenceParams, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """:func:`tissue_signal` of a gradient-echo preset (the same gain draws as the spin echoes')."""
    t1_fat, field = (_FAT[2] if seq.field_strength >= 2.0 else _FAT[1]), seq.field_strength
    t2_star_fat = _t2_star(_FAT_T2_GRADIENT_ECHO, _T2_PRIME_DEFAULT, field)
    fat = _double_echo_steady_state(_FAT[0], t1_fat, _FAT_T2_GRADIENT_ECHO, t2_star_fat, seq) * seq.fat_residual
    lut = np.zeros(256, dtype=np.float32)
    for tissue, (pd, t1_low, t1_high, t2, fat_fraction) in _TISSUE.items():
        t2_star = _t2_star(t2, _T2_PRIME.get(tissue, _T2_PRIME_DEFAULT), field)
        water = _double_echo_steady_state(pd, t1_high if field >= 2.0 else t1_low, t2, t2_star, seq)
        water *= _MT_SIGNAL.get(tissue, 1.0)
        gain = float(np.exp(rng.normal(0.0, jitter))) if jitter > 0 else 1.0
        lut[int(tissue)] = gain * ((1.0 - fat_fraction) * water + fat_fraction * fat)
    return lut / lut.max()


def tissue_signal(seq: SequenceParams, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Signal per :class:`Signal` value (float32, 256 entries), brightest tissue about 1."""
    if seq.weighting.gradient_echo:
        return _gradient_echo_lut(seq, rng, jitter)
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
