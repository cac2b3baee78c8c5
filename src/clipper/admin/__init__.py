"""The Python admin client, modelled on clipper_admin."""

from .connection import ClipperConnection
from .exceptions import ClipperException, NotReadyException, UnconnectedException
from .manager import LocalContainerManager

__all__ = [
    "ClipperConnection",
    "ClipperException",
    "LocalContainerManager",
    "NotReadyException",
    "UnconnectedException",
]
