from tests.assembly.factory import manual_node  # noqa: F401 - fixture
