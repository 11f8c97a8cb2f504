"""Fixtures of the model registry and shadow-mode tests: two small department models, a migrated data folder."""

from __future__ import annotations

import pytest
import torch

from ortho_node.app.cli.main import main
from ortho_node.model.system import OrthoModel, new_card, save_system
from ortho_node.model.unet import UNetConfig


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, object]:
    """Two small untrained task models a department might have trained (reduced configuration, seeded)."""
    root = tmp_path_factory.mktemp("department-models")
    folders = {}
    for seed, version in ((1, "dept-a"), (2, "dept-b")):
        torch.manual_seed(seed)
        folder = root / version
        save_system(folder, OrthoModel(new_card(UNetConfig.reduced(), name="Department knee", version=version)))
        folders[version] = folder
    return folders


@pytest.fixture
def data_dir(tmp_path):
    data = tmp_path / "data"
    assert main(["db", "upgrade", "--data-dir", str(data)]) == 0
    return data
