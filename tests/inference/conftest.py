"""Shared fixtures: a small deterministic task model on disk and small assembled studies built in memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ortho_node.assembly.study import AssembledStudy
from ortho_node.labels import MODEL_PLANES, Plane
from ortho_node.model.system import OrthoModel, new_card, save_system
from ortho_node.training.taskdata import assembled_from_synthetic
from ortho_node.model.unet import UNetConfig
from ortho_node.synthetic import DomainRandomization, generate_study

FAST = {"scene_spacing": 1.0, "domain": DomainRandomization(matrices=(256,), pixel_mm=(0.3, 0.7))}


def locate(uid: str) -> Path:
    return Path("/stored") / f"{uid}.dcm"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """An untrained but seeded reduced task model: the predictor's mechanics do not need trained weights."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    save_system(directory, OrthoModel(new_card(UNetConfig.reduced(), version="test")))
    return directory


@pytest.fixture(scope="session")
def knee_study() -> AssembledStudy:
    """A synthetic knee, every plane decimated to at most 128 x 128 pixels (keeps the tests fast)."""
    study = assembled_from_synthetic(generate_study("knee", 21, **FAST))
    return with_planes(study, {p: v.pixels[:, ::2, ::2] for p, v in study.planes.items()})


def with_planes(study: AssembledStudy, pixels: dict[Plane, np.ndarray]) -> AssembledStudy:
    """``study`` holding exactly these planes, with per-slice geometry rebuilt to fit each array."""
    volumes = {}
    for plane, array in pixels.items():
        template = study.planes[plane]
        g = template.geometry
        n = array.shape[0]
        geometry = dataclasses.replace(
            g, sop_instance_uids=tuple(f"{g.series_instance_uid}.{k + 1}" for k in range(n)),
            frame_numbers=(None,) * n,
            image_positions=tuple(tuple(float(c) + k * g.slice_spacing for c in g.image_positions[0]) for k in range(n)),
        )
        volumes[plane] = dataclasses.replace(template, pixels=np.ascontiguousarray(array, dtype=np.float32),
                                             geometry=geometry)
    missing = tuple(p for p in MODEL_PLANES if p not in volumes)
    return dataclasses.replace(study, planes=volumes, missing_planes=missing)



def assert_same_outcome(outcome, alone, predictor, study: AssembledStudy) -> None:
    """``outcome`` (from a batch) is ``alone`` (the study by itself) up to the float rounding of kernels that
    differ between batch sizes: probabilities within 1e-4, masks equal except where the study's two most
    likely structures are within 1e-4 of each other (a tie at that rounding)."""
    assert outcome.analysed_planes == alone.analysed_planes and outcome.windows == alone.windows
    assert outcome.skipped_planes == alone.skipped_planes
    maps = None
    for batched, single in zip(outcome.prediction.segmentations, alone.prediction.segmentations, strict=True):
        assert batched.series_instance_uid == single.series_instance_uid
        differ = batched.mask != single.mask
        if differ.any():
            maps = maps or source_maps(predictor, study)
            top = maps[batched.plane].topk(2, dim=0).values
            assert ((top[0] - top[1])[torch.from_numpy(differ)] < 1e-4).all()
            assert differ.mean() < 1e-3
    for batched, single in zip(outcome.prediction.findings, alone.prediction.findings, strict=True):
        assert batched.label == single.label and batched.probability == pytest.approx(single.probability, abs=1e-4)


def source_maps(predictor, study: AssembledStudy) -> dict[Plane, torch.Tensor]:
    """The predictor's class maps of each plane on the source grid, its chunks joined along the slices."""
    chunks: dict[Plane, list[torch.Tensor]] = {}
    for plane, _, maps in predictor.source_class_maps(study):
        chunks.setdefault(plane, []).append(maps)
    return {plane: torch.cat(parts, dim=1) for plane, parts in chunks.items()}
