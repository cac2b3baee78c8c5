import cloudpickle

from tests.reliability import models

# The containers cannot import the tests package: ship these models by value.
cloudpickle.register_pickle_by_value(models)
