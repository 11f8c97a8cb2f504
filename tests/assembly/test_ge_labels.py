"""The hand-made labels of the real GE knee series (tests/data/ge_knee_labels) agree with the series itself."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydicom import dcmread

from tests.conftest import GE_SERIES

LABELS = Path(__file__).resolve().parents[1] / "data" / "ge_knee_labels" / "labels.json"
BONES = ("femur", "tibia", "patella")


def rasterise(polygons: list, rows: int, columns: int) -> np.ndarray:
    canvas = Image.new("L", (columns, rows), 0)
    for polygon in polygons:
        ImageDraw.Draw(canvas).polygon([tuple(vertex) for vertex in polygon], fill=1)
    return np.asarray(canvas, dtype=bool)


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(LABELS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def headers() -> dict:
    if not GE_SERIES.is_dir():
        pytest.skip(f"the GE series is not at {GE_SERIES}")
    return {ds.SOPInstanceUID: ds for ds in (dcmread(p, stop_before_pixels=True) for p in GE_SERIES.glob("*.dcm"))}


def test_every_labelled_slice_is_a_first_echo_of_the_series(document, headers):
    assert len(document["slices"]) >= 6
    assert {entry["position"] for entry in document["slices"]} == {"medial", "central", "lateral"}
    for entry in document["slices"]:
        ds = headers[entry["sop_instance_uid"]]
        assert ds.SeriesInstanceUID == document["series_instance_uid"]
        assert int(ds.EchoNumbers) == document["echo_number"] == 1
        assert int(ds.InstanceNumber) == entry["instance_number"]
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], entry["image_position_patient"], atol=1e-3)
        assert (int(ds.Rows), int(ds.Columns)) == (document["rows"], document["columns"])


def test_polygons_lie_on_the_grid_and_bones_have_plausible_areas(document):
    rows, columns = document["rows"], document["columns"]
    for entry in document["slices"]:
        labels = entry["labels"]
        assert {"femur", "tibia"} <= set(labels) <= set(document["structures"])
        for name, polygons in labels.items():
            for polygon in polygons:
                assert len(polygon) >= 8, (entry["instance_number"], name)
                assert all(0 <= c < columns and 0 <= r < rows for c, r in polygon), (entry["instance_number"], name)
        area = {name: int(rasterise(polygons, rows, columns).sum()) for name, polygons in labels.items()}
        assert area["femur"] > 2000 and area["tibia"] > 1500, (entry["instance_number"], area)
        if entry["position"] == "central":
            assert area["femur"] > 5000 and 500 < area.get("patella", 0) < 3000, (entry["instance_number"], area)
        if "femoral_cartilage" in area:
            assert 50 < area["femoral_cartilage"] < area["femur"] / 10, (entry["instance_number"], area)


def test_structures_do_not_overlap(document):
    """Neighbours may share their boundary pixels (PIL fills outlines), not more."""
    rows, columns = document["rows"], document["columns"]
    for entry in document["slices"]:
        masks = {name: rasterise(polygons, rows, columns) for name, polygons in entry["labels"].items()}
        for a, b in combinations(masks, 2):
            shared = int((masks[a] & masks[b]).sum())
            limit = 40 if {a, b} == {"femur", "femoral_cartilage"} else 5
            assert shared <= limit, (entry["instance_number"], a, b, shared)
        bones = [masks[name] for name in BONES if name in masks]
        assert int(np.sum(bones, axis=0).max()) <= 2
