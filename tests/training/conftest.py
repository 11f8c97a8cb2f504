"""Fixtures the training tests share with the model tests (small backbones and volumes) and with the assembly
tests (a node on a manual clock, whose archive labelled studies are read from)."""

from tests.assembly.factory import manual_node  # noqa: F401 - fixture, found by name
from tests.model.conftest import smooth_volume, tiny_model  # noqa: F401 - fixtures, found by name
