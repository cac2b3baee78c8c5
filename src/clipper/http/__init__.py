"""Clipper's one HTTP stack, serving both the query and the management port.

- :mod:`.server`: HTTP/1.1 on httptools as an ``asyncio.Protocol`` (requests,
  responses, limits, deadlines, TLS through the event loop);
- :mod:`.auth`: admin tokens, dashboard sessions, app API keys and the
  ``Host``/``Origin`` guard against cross-site requests and DNS rebinding.
"""
