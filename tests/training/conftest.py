"""Fixtures the training tests share with the model tests (small backbones and volumes)."""

from tests.model.conftest import smooth_volume, tiny_model  # noqa: F401 - fixtures, found by name
