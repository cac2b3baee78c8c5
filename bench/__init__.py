"""Benchmarks of the Clipper server (``make bench``); see docs/benchmarks.md."""
