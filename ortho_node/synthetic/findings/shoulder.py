"""Shoulder findings: SSP, ISP, SSC, LHBT, AC, GHJ, BTSE, SASD (DIAGNOSIS_LABELS[Joint.SHOULDER])."""

from __future__ import annotations

import dataclasses

import numpy as np

from ortho_node.synthetic.anatomy import AnatomyModel
from ortho_node.synthetic.anatomy.shoulder import ShoulderParams
from ortho_node.synthetic.findings import FindingSpec, Lesion
from ortho_node.synthetic.findings.common import SOFT, band_injury, marrow_oedema
from ortho_node.synthetic.scene import Paint
from ortho_node.synthetic.shapes import Ellipsoid
from ortho_node.synthetic.structures import Signal, Structure as S

# Unit directions from the head centre to each tendon's critical zone (near its footprint).
_CUFF_SITES = {
    S.SUPRASPINATUS: (0.45, -0.05, 0.89),
    S.INFRASPINATUS: (0.35, 0.75, 0.55),
    S.SUBSCAPULARIS: (0.25, -0.95, 0.15),
}


def _cuff_tear(structure: S):
    def lesion(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
        s = m.points["scale"][0]
        direction = np.asarray(_CUFF_SITES[structure]) + rng.normal(0, 0.08, 3)
        centre = direction / np.linalg.norm(direction) * m.points["cuff_mid"][0]
        full = bool(rng.random() < 0.6)
        size = float(rng.uniform(7.0, 12.0)) * s
        radial = 5.0 * s if full else 2.0 * s  # a partial tear leaves fibres on one side
        if not full:
            centre = centre + direction / np.linalg.norm(direction) * 1.5 * s
        gap = Ellipsoid(centre, [size, size, size])
        shell = Ellipsoid(centre, [size + radial, size + radial, size + radial])
        paints = [Paint(shell, structure, Signal.DEGENERATE, within=frozenset({structure})),
                  Paint(Ellipsoid(centre, [size, size, radial]) if not full else gap, S.FLUID,
                        within=frozenset({structure, S.SASD_BURSA}))]
        return Lesion(paints, f"{'full' if full else 'partial'}-thickness tear, {2 * size:.0f} mm")
    return lesion


def _biceps(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
    return band_injury(m.points["biceps"], 2.3 * m.points["scale"][0], S.BICEPS_LONG_HEAD, rng)


def _widen_ac(p: ShoulderParams, rng: np.random.Generator) -> ShoulderParams:
    return dataclasses.replace(p, ac_gap=float(rng.uniform(5.0, 8.0)))


def _ac(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
    s, c = m.points["scale"][0], m.points["ac_joint"]
    paints = [
        Paint(Ellipsoid(c + np.array([0, 0, 6]) * s, np.array([9, 11, 6]) * s), S.AC_JOINT, Signal.DEGENERATE,
              within=SOFT),  # capsular hypertrophy
        marrow_oedema(c - np.array([8, 0, 0]) * s, np.array([9, 10, 9]) * s, frozenset({S.CLAVICLE})),
        marrow_oedema(c + np.array([8, 0, 0]) * s, np.array([9, 10, 6]) * s, frozenset({S.ACROMION})),
    ]
    return Lesion(paints, "acromioclavicular joint widening with capsular hypertrophy and marrow oedema",
                  (m.parts["ac_joint"],))


def _distend_joint(p: ShoulderParams, rng: np.random.Generator) -> ShoulderParams:
    return dataclasses.replace(p, joint_fluid=float(rng.uniform(2.5, 5.0)))


def _glenohumeral(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
    s = m.points["scale"][0]
    rim = m.points["labrum"]
    site = rim[int(rng.integers(len(rim) - 1))]
    tear = Paint(Ellipsoid(site, np.array([3.0, 1.0, 5.0]) * s), None, Signal.FLUID, within=frozenset({S.LABRUM}))
    return Lesion([tear], "glenohumeral effusion with a labral tear", (m.parts["fluid"],))


def _distend(field: str, low: float, high: float):
    def adjust(p: ShoulderParams, rng: np.random.Generator) -> ShoulderParams:
        return dataclasses.replace(p, **{field: float(rng.uniform(low, high))})
    return adjust


def _region_only(part: str, description: str):
    def lesion(m: AnatomyModel, rng: np.random.Generator) -> Lesion:
        return Lesion([], description, (m.parts[part],))
    return lesion


FINDINGS: dict[str, FindingSpec] = {
    "SSP": FindingSpec("SSP", _cuff_tear(S.SUPRASPINATUS)),
    "ISP": FindingSpec("ISP", _cuff_tear(S.INFRASPINATUS)),
    "SSC": FindingSpec("SSC", _cuff_tear(S.SUBSCAPULARIS)),
    "LHBT": FindingSpec("LHBT", _biceps),
    "AC": FindingSpec("AC", _ac, _widen_ac),
    "GHJ": FindingSpec("GHJ", _glenohumeral, _distend_joint),
    "BTSE": FindingSpec("BTSE", _region_only("sheath", "fluid distending the biceps tendon sheath"),
                        _distend("sheath", 2.0, 4.0)),
    "SASD": FindingSpec("SASD", _region_only("bursa", "distended subacromial-subdeltoid bursa"),
                        _distend("bursa", 2.0, 4.5)),
}
