"""Errors of the admin client, named as in clipper_admin."""

from ..exceptions import ClipperError


class ClipperException(ClipperError):
    """A management operation failed; the message carries the server's reason."""


class UnconnectedException(ClipperException):
    """A call that needs a server, made before ``start_clipper()`` or ``connect()``."""

    def __init__(self) -> None:
        super().__init__("not connected to a Clipper server: call start_clipper() or connect()")


class NotReadyException(ClipperException, TimeoutError):
    """A wait for live replicas timed out (or their replicas keep crashing); the
    message names what is not live and the replica logs to read."""
