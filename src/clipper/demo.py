"""The demo behind ``make run``: app ``digits``, a scikit-learn classifier.

An RBF support-vector classifier, trained at start-up on scikit-learn's
bundled digits data (8x8 images, 64 doubles per query), so nothing is
downloaded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import cloudpickle
import orjson

from .management.service import ManagementService
from .settings import Settings

log = logging.getLogger("clipper.demo")

APP = "digits"
MODEL = "digits-svc"


def train() -> tuple[Any, list[float], int]:
    """A fitted classifier, one held-out image and its label."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    x, y = digits.data, digits.target
    clf = SVC(gamma=0.001)  # trains in well under a second, ~98 % held-out accuracy
    clf.fit(x[:-100], y[:-100])
    return clf, [float(v) for v in x[-1]], int(y[-1])


def make_predict(clf: Any) -> Any:
    def predict(inputs: Any) -> list[int]:
        return [int(label) for label in clf.predict(inputs)]

    return predict


async def install_demo(service: ManagementService, settings: Settings) -> str:
    """Register the app, deploy and link the model (skipping what exists).

    Returns the greeting to print once the model's replica is live.
    """
    log.info("training the demo classifier on scikit-learn's digits data")
    clf, sample, label = await asyncio.to_thread(train)
    if service.store.get_app(APP) is None:
        await service.add_app(APP, "doubles", "-1", 100_000, input_shape=[64])
    if not service.store.list_models(MODEL):
        await service.add_model(
            MODEL, "1", "doubles", model_data=cloudpickle.dumps(make_predict(clf))
        )
    if MODEL not in service.store.get_links(APP):
        await service.add_links(APP, [MODEL])
    body = orjson.dumps({"input": sample}).decode()
    query = settings.address.query_url
    url = f"{query}/{APP}/predict"
    return (
        f"\nClipper demo ready. The app '{APP}' classifies 8x8 digit images.\n"
        f"  Query:      {url}\n"
        f"  Metrics:    {query}/metrics\n"
        f"Try it (this image is a {label}):\n\n"
        f"  curl -X POST {url} -H 'Content-Type: application/json' -d '{body}'\n\n"
        "Press Ctrl-C to stop.\n"
    )
