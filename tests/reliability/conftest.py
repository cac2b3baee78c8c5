from tests.fixtures import ship_by_value
from tests.reliability import models

ship_by_value(models)
