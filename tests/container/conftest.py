from tests.container import models
from tests.fixtures import clipper_fixture, ship_by_value

ship_by_value(models)
clipper = clipper_fixture("clipper-container")
