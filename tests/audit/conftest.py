import pytest

from tests.console.seeded import seed


@pytest.fixture(scope="package")
def seeded(tmp_path_factory):
    node = seed(tmp_path_factory.mktemp("seeded"))
    yield node
    node.stop()
