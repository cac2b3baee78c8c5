"""Deploy a fitted scikit-learn estimator or pipeline (needs the ``sklearn`` extra).

The estimator travels inside a cloudpickled closure (see
:func:`clipper.deployers.python.deploy_python_closure`), so the container
needs scikit-learn importable: the server's environment, or give it with
``pkgs_to_install=["scikit-learn==<the version you trained with>"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .python import deploy_python_closure

if TYPE_CHECKING:
    from ..admin import ClipperConnection

METHODS = ("predict", "predict_proba", "decision_function")


def _validate(model: Any, method: str) -> None:
    """Raise ValueError unless ``model`` is a fitted estimator with ``method``."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    kind = type(model).__name__
    try:
        check_is_fitted(model)
    except NotFittedError as exc:
        raise ValueError(f"the {kind} is not fitted: call fit() before deploying it") from exc
    except TypeError as exc:  # not an estimator at all
        raise ValueError(f"{kind} is not a scikit-learn estimator: {exc}") from exc
    # hasattr is False for methods a fitted estimator does not offer
    # (sklearn's available_if), e.g. predict_proba on SVC(probability=False).
    if not callable(getattr(model, method, None)):
        raise ValueError(f"the {kind} has no {method}() method")


def _make_predict(model: Any, method: str = "predict") -> Callable[[Any], list[Any]]:
    """The closure shipped to the container: one batch in, plain Python values out.

    Self-contained (it references only ``model`` and ``method``), so it
    unpickles without importing this module.
    """

    def plain(value: Any) -> Any:
        # numpy values (and tensors) become lists and numbers, float32 at its own
        # precision; clipper is importable wherever the closure runs
        from clipper.rpc.protocol import plain_value

        return plain_value(value)

    def predict(inputs: Any) -> list[Any]:
        out = getattr(model, method)(inputs)
        if isinstance(out, list):  # multi-output predict_proba: one array per output
            return [[plain(o[i]) for o in out] for i in range(len(inputs))]
        return [plain(row) for row in out]

    return predict


def deploy_sklearn_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str,
    input_type: str,
    model: Any,
    *,
    method: str = "predict",
    labels: list[str] | None = None,
    batch_size: int = -1,
    num_replicas: int = 1,
    pkgs_to_install: list[str] | None = None,
    options: dict[str, Any] | None = None,
    exist_ok: bool = False,
    wait: bool = True,
    timeout: float = 300.0,
) -> None:
    """Deploy a fitted scikit-learn estimator or pipeline as model ``name:version``.

    Each query's output is the estimator's answer for it as plain JSON
    values: ``method="predict"`` gives the label (or value) per input,
    ``"predict_proba"`` one list of class probabilities per input and
    ``"decision_function"`` the score (binary) or list of scores per input.
    The batch reaches the estimator as the container receives it: a 2-D
    array for same-length numeric inputs, a list for strings (fit for a text
    pipeline).

    Raises ValueError, before anything is shipped, when the estimator is not
    fitted or lacks ``method``. The other keyword arguments are those of
    :func:`~clipper.deployers.python.deploy_python_closure`.
    """
    _validate(model, method)
    deploy_python_closure(
        clipper_conn,
        name,
        version,
        input_type,
        _make_predict(model, method),
        labels=labels,
        batch_size=batch_size,
        num_replicas=num_replicas,
        pkgs_to_install=pkgs_to_install,
        options=options,
        exist_ok=exist_ok,
        wait=wait,
        timeout=timeout,
    )
