from tests.fixtures import clipper_fixture, ship_by_value
from tests.oip import models

ship_by_value(models)
clipper = clipper_fixture("clipper-oip")
