"""Exceptions of the package.

    ClipperError
    ├── ValidationError     bad input from a client or operator (HTTP 400)
    │   └── InputError      a query's input does not match the app's type or shape
    ├── NotFoundError       an app, model or version that does not exist (HTTP 404
    │                       on the query port, 400 on the management port, as Clipper)
    ├── PayloadTooLarge     a request body over the configured limit (HTTP 413)
    ├── StoreError          the config store could not be read or written
    └── RPCError            a malformed or incompatible message on the RPC socket

Frontends map these to HTTP statuses at their edge; nothing below them knows
about HTTP. Errors raised by a model travel back from the container as data
(type name and message), never as pickled exceptions.
"""


class ClipperError(Exception):
    """Base class of every error this package raises on purpose."""


class ValidationError(ClipperError, ValueError):
    """A request or operator command is malformed or inconsistent."""


class InputError(ValidationError):
    """A query input does not match its app's input type or declared shape."""


class NotFoundError(ClipperError, LookupError):
    """An app, model or model version does not exist."""


class PayloadTooLarge(ClipperError):
    """A request body exceeds the configured limit."""


class StoreError(ClipperError):
    """The config store failed."""


class RPCError(ClipperError):
    """A malformed, unexpected or incompatible RPC message."""
