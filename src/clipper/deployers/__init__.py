"""Deployers: ship a model to a Clipper server through its management API."""
