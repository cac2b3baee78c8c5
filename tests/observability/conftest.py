import cloudpickle
import pytest

from tests.helpers import Clipper
from tests.observability import models

# The containers cannot import the tests package: ship these models by value.
cloudpickle.register_pickle_by_value(models)


@pytest.fixture(scope="module")
def clipper(tmp_path_factory):
    server = Clipper(tmp_path_factory.mktemp("clipper-state")).start()
    yield server
    server.stop()
