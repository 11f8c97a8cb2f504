"""Shared fixtures: studies are generated once per module on a coarse scene so the folder stays fast."""

from __future__ import annotations

import shutil

import pytest

from ortho_node.synthetic import DomainRandomization

#: 1 mm scene and 256 matrices: same code paths as the defaults at a fraction of the cost.
FAST = {"scene_spacing": 1.0, "domain": DomainRandomization(matrices=(256,), pixel_mm=(0.3, 0.7))}


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    path = shutil.which("dciodvfy")
    if path is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    return path
