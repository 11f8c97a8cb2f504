"""How far a shadow model's result agrees with the active model's on the same study, and over many studies:
per structure the voxels both masks hold and each holds (Dice), per finding both calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from ortho_node.db.models import ShadowResult
from ortho_node.prediction import StudyPrediction


def compare(active: StudyPrediction, shadow: StudyPrediction) -> dict:
    """One study: ``structures`` name -> [voxels in both masks, in the active mask, in the shadow mask], summed
    over the series both segmented; ``findings`` label -> both probabilities and calls."""
    shadow_masks = {s.series_instance_uid: s for s in shadow.segmentations}
    counts: dict[str, list[int]] = {}
    for seg in active.segmentations:
        other = shadow_masks.get(seg.series_instance_uid)
        if other is None or other.mask.shape != seg.mask.shape:
            continue
        for k, name in enumerate(seg.structures):
            if k == 0 or name not in other.structures:
                continue
            mine, theirs = seg.mask == k, other.mask == other.structures.index(name)
            total = counts.setdefault(name, [0, 0, 0])
            total[0] += int((mine & theirs).sum())
            total[1] += int(mine.sum())
            total[2] += int(theirs.sum())
    shadow_findings = {f.label: f for f in shadow.findings}
    findings = {f.label: {"active": f.probability, "shadow": shadow_findings[f.label].probability,
                          "active_present": f.present, "shadow_present": shadow_findings[f.label].present}
                for f in active.findings if f.label in shadow_findings}
    return {"structures": counts, "findings": findings}


def dice(counts: Sequence[int]) -> float | None:
    """2 |A and S| / (|A| + |S|); None where neither mask holds the structure."""
    both, active, shadow = counts
    return None if active + shadow == 0 else 2 * both / (active + shadow)


def summarize(agreements: Sequence[tuple[int, Mapping]]) -> dict:
    """Many studies' :func:`compare` results, each with its shadow result id: per structure the mean of the
    studies' Dice (studies where either mask holds it) and the pooled Dice; per finding how often the calls
    differ; the shadow results whose findings differ."""
    structures: dict[str, dict] = {}
    for name in sorted({n for _, a in agreements for n in a["structures"]}):
        values = [d for _, a in agreements if (d := dice(a["structures"].get(name, (0, 0, 0)))) is not None]
        pooled = np.sum([a["structures"][name] for _, a in agreements if name in a["structures"]], axis=0)
        structures[name] = {"dice_mean": float(np.mean(values)) if values else None,
                            "dice_pooled": dice(pooled.tolist()), "studies": len(values)}
    findings: dict[str, dict] = {}
    differing: list[int] = []
    for result_id, agreement in agreements:
        differs = False
        for label, calls in agreement["findings"].items():
            entry = findings.setdefault(label, {"studies": 0, "differ": 0, "active_present": 0, "shadow_present": 0})
            entry["studies"] += 1
            entry["active_present"] += int(calls["active_present"])
            entry["shadow_present"] += int(calls["shadow_present"])
            if calls["active_present"] != calls["shadow_present"]:
                entry["differ"] += 1
                differs = True
        if differs:
            differing.append(result_id)
    return {"studies": len(agreements), "structures": structures, "findings": findings,
            "differing_results": differing}


def agreement_reports(session: Session) -> list[dict]:
    """Every stored shadow result, per pair of shadow and active model versions (in the order each pair first
    ran): the pair named, then :func:`summarize` of its results."""
    pairs: dict[tuple[str, str, str], list[tuple[int, Mapping]]] = {}
    for row in session.execute(select(ShadowResult.id, ShadowResult.model_name, ShadowResult.model_version,
                                      ShadowResult.active_model_version, ShadowResult.agreement)
                               .order_by(ShadowResult.id)):
        pairs.setdefault((row.model_name, row.model_version, row.active_model_version), []).append(
            (row.id, row.agreement))
    return [{"shadow_model": name, "shadow_version": version, "active_version": active, **summarize(items)}
            for (name, version, active), items in pairs.items()]
