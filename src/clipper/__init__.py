"""Clipper, rebuilt in Python: a low-latency online prediction serving system.

Kept free of imports so that ``clipper.container`` loads with only pyzmq,
msgpack, numpy and cloudpickle installed.
"""

__version__ = "0.1.0.dev0"
