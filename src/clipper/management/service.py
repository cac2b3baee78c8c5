"""The management service: validated operations on apps, models, links, replicas.

The management frontend, the demo and tests call this; it writes the config
store, refreshes the query path's catalog and asks the container manager
to match the requested replicas. It knows nothing of HTTP.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from ..exceptions import NotFoundError, ValidationError
from ..managers.base import ContainerManager
from ..managers.envs import EnvironmentBuilder, check_model_loads
from ..selection.policies import get_policy
from ..store.base import ConfigStore
from ..store.catalog import Catalog, UnknownVersion
from ..types import (
    AppOptions,
    AppSpec,
    InputType,
    ModelId,
    ModelOptions,
    ModelSpec,
    RolloutSpec,
    validate_app_name,
    validate_name,
)
from .uploads import ArtifactUploads, link_or_copy

log = logging.getLogger("clipper.management")

PYTHON_CLOSURE = "python-closure"
ARTIFACT_NAME = "model.pkl"
ENV_FILE = "env.json"


def validate_policy(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Normalised parameters of a selection policy, or ValidationError naming the problem."""
    try:
        return get_policy(name).validate_params(dict(params or {}))
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValidationError(message)


def validate_requirements(pkgs: object) -> list[str]:
    """``pkgs_to_install``: a list of PEP 508 requirements by name (``numpy==2.1``,
    ``pkg[extra]>=1; python_version>"3.10"``), or ValidationError naming the entry.

    pip reads more than requirements from its command line: an option
    (``--index-url``, ``-e``, ``-r``) or a URL would let a deploy choose where
    code comes from, so neither is accepted; a named index or a local wheel
    belongs in the server's pip configuration.
    """
    _check(
        isinstance(pkgs, list) and all(isinstance(p, str) and p.strip() for p in pkgs),
        "pkgs_to_install must be a list of pip requirement strings",
    )
    assert isinstance(pkgs, list)
    for entry in pkgs:
        if entry.strip().startswith("-"):
            raise ValidationError(
                f"pkgs_to_install: {entry!r} is a pip option, not a requirement "
                "(options such as --index-url and -e are not accepted)"
            )
        try:
            requirement = Requirement(entry)
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0]
            raise ValidationError(
                f"pkgs_to_install: {entry!r} is not a PEP 508 requirement ({reason})"
            ) from None
        if requirement.url is not None:
            raise ValidationError(
                f"pkgs_to_install: {entry!r} names a URL; give a package by name and version "
                "(URL requirements are not accepted)"
            )
    return list(pkgs)


def describe_differences(what: str, existing: dict[str, Any], wanted: dict[str, Any]) -> str:
    """``exist_ok``'s error: ``what`` exists, defined otherwise; each field that differs,
    with the existing value and the one asked for. "" if nothing differs."""
    changed = [
        f"{key} is {existing[key]!r}, not {wanted[key]!r}"
        for key in wanted
        if existing.get(key) != wanted[key]
    ]
    if not changed:
        return ""
    return (
        f"{what} already exists with a different definition ({'; '.join(changed)}): "
        "give it another name or version, or delete it first"
    )


def validate_model_data_path(path: object, state_dir: Path) -> str:
    """A ``model_data_path`` given without ``model_data``: "" (none), or a path
    that resolves (symbolic links followed) to a place inside ``state_dir``;
    the resolved path, or ValidationError. Replicas unpickle what it names and
    run the interpreter its ``env.json`` names, so it must be the server's own."""
    _check(isinstance(path, str), "model_data_path must be a string")
    assert isinstance(path, str)
    if path == "":
        return path
    rule = f"model_data_path must be a path inside the server's state folder ({state_dir})"
    try:
        resolved = Path(path).resolve()
        root = state_dir.resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop
        raise ValidationError(f"{rule}; {path!r} does not resolve: {exc}") from None
    if resolved == root or not resolved.is_relative_to(root):
        raise ValidationError(f"{rule}; {path!r} resolves to {resolved}")
    return str(resolved)


class ManagementService:
    """Operator commands, validated, applied to the store, then propagated."""

    def __init__(
        self,
        store: ConfigStore,
        catalog: Catalog,
        manager: ContainerManager,
        state_dir: Path,
        *,
        default_batch_size: int = 64,
        max_artifact_bytes: int = 8 * 1024**3,
        rollout_report: Callable[[str], dict[str, Any] | None] | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.manager = manager
        self.state_dir = state_dir
        self.models_dir = state_dir / "models"
        self.log_dir = state_dir / "logs"
        # Called after every change, once the catalog is fresh (the dispatcher
        # re-reads batching settings, the cache forgets deleted versions).
        self.listeners: list[Callable[[], None]] = []
        # How many replicas a model version runs, given its stored count (the
        # autoscaler overrides this for autoscaled models).
        self.replica_target: Callable[[ModelId, int], int] = lambda _model, stored: stored
        self.envs = EnvironmentBuilder(state_dir / "envs")
        self.default_batch_size = default_batch_size
        # Artifacts streamed to /admin/upload_artifact, until add_model names them.
        self.uploads = ArtifactUploads(state_dir / "uploads", max_bytes=max_artifact_bytes)
        # The query path's live figures of a model's rollout, per version (set by
        # the server once its rollout router exists); get_rollouts shows them.
        self.rollout_report = rollout_report
        self.clock: Callable[[], float] = time.time

    async def _changed(self) -> None:
        self.catalog.refresh()
        for listener in self.listeners:
            listener()
        await self.sync_replicas()

    def _check_placement(self, options: ModelOptions, count: int) -> None:
        """A ValidationError when the manager cannot place ``count`` replicas with
        these ``devices`` (a GPU that does not exist): refused before it is stored."""
        check = getattr(self.manager, "check_placement", None)
        if check is not None and options.devices is not None:
            check(options, count)

    async def sync_replicas(self) -> None:
        """Ask the manager for the replicas every deployed model version wants."""
        desired: dict[ModelId, tuple[ModelSpec, int]] = {}
        for model in self.store.list_models():
            if model.container_name == PYTHON_CLOSURE and Path(model.model_data_path).is_file():
                stored = self.store.get_num_replicas(model.name, model.version)
                desired[model.id] = (model, self.replica_target(model.id, stored))
        await self.manager.reconcile(desired)

    # -- apps ------------------------------------------------------------------

    async def add_app(
        self,
        name: str,
        input_type: str,
        default_output: str,
        latency_slo_micros: int,
        input_shape: list[int] | None = None,
        selection_policy: str = "single",
        policy_params: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        *,
        exist_ok: bool = False,
    ) -> AppSpec:
        """Register an app. With ``exist_ok`` an identical existing app is kept as it
        is (no change); one defined otherwise is an error naming the fields that differ."""
        validate_app_name(name)
        itype = InputType.parse(input_type)
        _check(isinstance(default_output, str), "default_output must be a string")
        _check(
            isinstance(latency_slo_micros, int)
            and not isinstance(latency_slo_micros, bool)
            and 1000 <= latency_slo_micros <= 600_000_000,
            "latency_slo_micros must be an integer between 1000 (1 ms) and 600000000 (10 min)",
        )
        shape: tuple[int, ...] | None = None
        if input_shape is not None:
            _check(
                isinstance(input_shape, list)
                and len(input_shape) > 0
                and all(
                    isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape
                ),
                "input_shape must be a non-empty list of positive integers",
            )
            _check(itype.is_numeric, "input_shape applies only to numeric input types")
            shape = tuple(input_shape)
        params = validate_policy(selection_policy, policy_params)
        spec = AppSpec(
            name,
            itype,
            default_output,
            latency_slo_micros,
            shape,
            selection_policy,
            params,
            AppOptions.parse(options or {}),
        )
        existing = self.store.get_app(name)
        if existing is not None:
            if not exist_ok:
                raise ValidationError(
                    f"application '{name}' already exists (exist_ok=True, --exist-ok in the CLI, "
                    "accepts an identical one)"
                )
            problem = describe_differences(
                f"application '{name}'", _app_fields(existing), _app_fields(spec)
            )
            if problem:
                raise ValidationError(problem)
            return existing
        self.store.add_app(spec)
        log.info("added app %s (%s, slo %d us)", name, itype.value, latency_slo_micros)
        await self._changed()
        return spec

    def _app(self, name: str) -> AppSpec:
        app = self.store.get_app(name)
        if app is None:
            raise ValidationError(f"application '{name}' does not exist")
        return app

    async def set_selection_policy(
        self, name: str, policy: str, params: dict[str, Any] | None = None
    ) -> None:
        """Change an app's selection policy; its learned state starts afresh."""
        app = self._app(name)
        normalised = validate_policy(policy, params)
        links = self.store.get_links(name)
        if policy == "single" and len(links) > 1:
            raise ValidationError(
                f"the 'single' policy takes exactly one linked model; '{name}' has "
                f"{len(links)} ({', '.join(links)}): unlink all but one first"
            )
        self.store.update_app(dataclasses.replace(app, policy=policy, policy_params=normalised))
        self.store.delete_policy_states(name)
        log.info("app %s now uses the %s policy", name, policy)
        await self._changed()

    async def set_app_options(self, name: str, options: dict[str, Any]) -> None:
        """Set an app's options (merged into the existing ones)."""
        app = self._app(name)
        if not isinstance(options, dict):
            raise ValidationError("app options must be a JSON object")
        merged = {**app.options.to_json(), **options}
        typed = AppOptions.parse({k: v for k, v in merged.items() if v is not None})
        self.store.update_app(dataclasses.replace(app, options=typed))
        await self._changed()

    async def set_model_options(self, name: str, version: str, options: dict[str, Any]) -> None:
        """Set a model version's batching and queueing options (merged)."""
        model = self._model(name, version)
        if not isinstance(options, dict):
            raise ValidationError("model options must be a JSON object")
        # Merge first, then check the result as a whole; a null removes a key.
        merged = {**model.options.to_json(), **options}
        typed = ModelOptions.parse({k: v for k, v in merged.items() if v is not None})
        self._check_placement(typed, self.store.get_num_replicas(name, version))
        self.store.update_model(dataclasses.replace(model, options=typed))
        await self._changed()

    async def delete_app(self, name: str) -> None:
        if not self.store.delete_app(name):
            raise NotFoundError(f"application '{name}' does not exist")
        log.info("deleted app %s", name)
        await self._changed()

    def get_app(self, name: str) -> dict[str, Any]:
        app = self.store.get_app(name)
        if app is None:
            return {}
        return {**app.to_json(), "linked_models": self.store.get_links(name)}

    def list_apps(self, verbose: bool = False) -> list[Any]:
        if not verbose:
            return [a.name for a in self.store.list_apps()]
        return [self.get_app(a.name) for a in self.store.list_apps()]

    # -- models ----------------------------------------------------------------

    async def add_model(
        self,
        model_name: str,
        model_version: str,
        input_type: str,
        *,
        labels: list[str] | None = None,
        container_name: str = PYTHON_CLOSURE,
        model_data_path: str = "",
        batch_size: int = -1,
        model_data: bytes | None = None,
        num_replicas: int = 1,
        pkgs_to_install: list[str] | None = None,
        options: dict[str, Any] | None = None,
        exist_ok: bool = False,
        artifact: str | None = None,
        make_current: bool = True,
    ) -> ModelSpec:
        """Register a model version; with ``model_data`` (a cloudpickled
        callable) the server stores it and starts replicas from it.
        ``artifact`` instead names one uploaded to ``/admin/upload_artifact``
        (its SHA-256): the same, for artifacts of any size.

        ``pkgs_to_install`` gives the model its own environment. The artifact
        must unpickle in that environment, or the deploy fails naming the
        missing module and leaves nothing registered.

        ``make_current=False`` keeps the model's current version as it is (a
        version to roll out with :meth:`start_rollout`, or to switch to later).

        With ``exist_ok`` an identical existing version (the same input type,
        labels, batch size, options, packages and artifact bytes) is kept as it
        is: no change, not even to the current version or the replica count;
        one defined otherwise is an error naming the fields that differ.
        """
        validate_name(model_name, "model name")
        validate_name(model_version, "model version")
        itype = InputType.parse(input_type)
        labels = labels or []
        _check(
            isinstance(labels, list) and all(isinstance(x, str) for x in labels),
            "labels must be a list of strings",
        )
        _check(
            isinstance(batch_size, int) and (batch_size == -1 or batch_size >= 1),
            "batch_size must be -1 (the server default) or a positive integer",
        )
        _check(
            isinstance(num_replicas, int) and 0 <= num_replicas <= 64,
            "num_replicas must be an integer between 0 and 64",
        )
        existing = self.store.get_model(model_name, model_version)
        if existing is not None and not exist_ok:
            raise ValidationError(
                f"model '{model_name}' already has a version '{model_version}' "
                "(exist_ok=True, --exist-ok in the CLI, accepts an identical one)"
            )
        for other in self.store.list_models(model_name):
            _check(
                other.input_type == itype,
                f"model '{model_name}' has input type '{other.input_type.value}', "
                f"not '{itype.value}'",
            )
        model_options = ModelOptions.parse(options or {})
        self._check_placement(model_options, num_replicas)
        pkgs = validate_requirements(pkgs_to_install or [])
        _check(
            model_data is None or artifact is None,
            "add_model: give model_data or artifact, not both",
        )
        upload = self.uploads.path_of(artifact) if artifact is not None else None
        shipped = model_data is not None or upload is not None
        _check(not pkgs or shipped, "pkgs_to_install needs model_data (or artifact)")
        if not shipped:
            model_data_path = validate_model_data_path(model_data_path, self.state_dir)
        if existing is not None:
            wanted = {
                "input_type": itype.value,
                "labels": list(labels),
                "batch_size": batch_size,
                "options": model_options.to_json(),
                "container_name": PYTHON_CLOSURE if shipped else container_name,
                "pkgs_to_install": pkgs,
            }
            if model_data is not None:
                wanted["model_data"] = _digest(model_data)
            elif upload is not None:
                wanted["model_data"] = "sha256:" + upload.name[:16]
            else:
                wanted["model_data_path"] = model_data_path
            problem = describe_differences(
                f"model '{model_name}' version '{model_version}'",
                self._model_fields(existing),
                wanted,
            )
            if problem:
                raise ValidationError(problem)
            return existing
        _check(isinstance(make_current, bool), "make_current must be true or false")
        if make_current:  # the current version is what a rollout holds still
            self._refuse_during_rollout(model_name, f"adding current version '{model_version}' to")
        artifact_dir = self.models_dir / model_name / model_version
        if shipped:
            source = upload if upload is not None else model_data
            assert source is not None
            model_data_path = str(await self._store_artifact(artifact_dir, source, pkgs))
            container_name = PYTHON_CLOSURE
        spec = ModelSpec(
            model_name,
            model_version,
            itype,
            tuple(labels),
            container_name,
            model_data_path,
            batch_size,
            model_options,
        )
        try:
            self.store.add_model(spec, make_current=make_current)
            if num_replicas != 1:
                self.store.set_num_replicas(model_name, model_version, num_replicas)
        except Exception:
            if shipped:
                shutil.rmtree(artifact_dir, ignore_errors=True)
            raise
        log.info("added model %s:%s", model_name, model_version)
        await self._changed()
        return spec

    async def _store_artifact(
        self, artifact_dir: Path, data: bytes | Path, pkgs: list[str]
    ) -> Path:
        """Write the artifact (bytes, or an uploaded file: linked, not read), build its
        environment, check it loads; all or nothing."""
        if artifact_dir.exists():  # left over from a version deleted earlier
            shutil.rmtree(artifact_dir)
        artifact_dir.mkdir(parents=True)
        try:
            path = artifact_dir / ARTIFACT_NAME
            if isinstance(data, Path):
                link_or_copy(data, path)
            else:
                path.write_bytes(data)
            python = await self.envs.ensure(pkgs) if pkgs else sys.executable
            if pkgs:
                (artifact_dir / ENV_FILE).write_text(
                    json.dumps({"pkgs_to_install": pkgs, "python": python})
                )
            await check_model_loads(python, path)
        except BaseException:
            shutil.rmtree(artifact_dir, ignore_errors=True)
            raise
        return path

    def _model_fields(self, model: ModelSpec) -> dict[str, Any]:
        """A stored version's definition, as ``exist_ok`` compares it."""
        fields = model.to_json()
        pkgs: list[str] = []
        env = Path(model.model_data_path).parent / ENV_FILE if model.model_data_path else None
        if env is not None and env.is_file():
            pkgs = list(json.loads(env.read_text()).get("pkgs_to_install", []))
        fields["pkgs_to_install"] = pkgs
        artifact = Path(model.model_data_path) if model.model_data_path else None
        if model.container_name == PYTHON_CLOSURE and artifact is not None and artifact.is_file():
            with open(artifact, "rb") as f:  # streamed: an artifact may be gigabytes
                fields["model_data"] = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()[:16]
        return fields

    def _model(self, name: str, version: str) -> ModelSpec:
        model = self.store.get_model(name, version)
        if model is None:
            raise self._unknown(name, version)
        return model

    def _unknown(self, name: str, version: str) -> ValidationError:
        """The error for a version not found: the model has no version by that name,
        or there is no model by that name at all (a typo in the model's name)."""
        if not self.store.list_models(name):
            return ValidationError(f"no model named '{name}'")
        return UnknownVersion(ModelId(name, version))

    async def delete_model_version(self, model_name: str, model_version: str) -> None:
        """Remove a version: its record, its replicas and its artifact."""
        rollout = self._rollout(model_name)
        if rollout is not None and model_version in (rollout.base_version, rollout.new_version):
            raise self._rollout_running(rollout, f"deleting version '{model_version}' of")
        if not self.store.delete_model_version(model_name, model_version):
            raise self._unknown(model_name, model_version)
        log.info("deleted model %s:%s", model_name, model_version)
        await self._changed()
        shutil.rmtree(self.models_dir / model_name / model_version, ignore_errors=True)

    def get_model(self, name: str, version: str) -> dict[str, Any]:
        model = self.store.get_model(name, version)
        if model is None:
            return {}
        return model.to_json(self.store.get_current_version(name))

    def list_models(self, verbose: bool = False) -> list[Any]:
        models = self.store.list_models()
        if not verbose:
            return [f"{m.name}:{m.version}" for m in models]
        current = {m.name: self.store.get_current_version(m.name) for m in models}
        return [m.to_json(current[m.name]) for m in models]

    async def set_model_version(self, model_name: str, model_version: str) -> None:
        self._model(model_name, model_version)
        self._refuse_during_rollout(model_name, "setting the version of")
        self._make_current(model_name, model_version)
        await self._changed()

    def _make_current(self, model_name: str, model_version: str) -> None:
        self.store.set_current_version(model_name, model_version)
        log.info("model %s now serves version %s", model_name, model_version)

    async def set_num_replicas(self, model_name: str, model_version: str, n: int) -> None:
        _check(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 64,
            "num_replicas must be an integer between 0 and 64",
        )
        spec = self._model(model_name, model_version)
        self._check_placement(spec.options, n)
        self.store.set_num_replicas(model_name, model_version, n)
        log.info("model %s:%s scaled to %d replicas", model_name, model_version, n)
        await self._changed()

    # -- links -----------------------------------------------------------------

    async def add_links(
        self, app_name: str, model_names: list[str], *, exist_ok: bool = False
    ) -> None:
        """Link models to an app. A model already linked is an error, or with
        ``exist_ok`` nothing to do."""
        app = self.store.get_app(app_name)
        if app is None:
            raise ValidationError(f"application '{app_name}' does not exist")
        _check(
            isinstance(model_names, list)
            and len(model_names) > 0
            and all(isinstance(m, str) for m in model_names),
            "model_names must be a non-empty list of strings",
        )
        for name in model_names:
            versions = self.store.list_models(name)
            _check(bool(versions), f"model '{name}' does not exist")
            _check(
                versions[0].input_type == app.input_type,
                f"model '{name}' takes '{versions[0].input_type.value}' but application "
                f"'{app_name}' takes '{app.input_type.value}'",
            )
        linked = self.store.get_links(app_name)
        already = [m for m in model_names if m in linked]
        if already and not exist_ok:
            raise ValidationError(
                f"model(s) {', '.join(repr(m) for m in already)} already linked to application "
                f"'{app_name}' (exist_ok=True, --exist-ok in the CLI, accepts that)"
            )
        if len(already) == len(set(model_names)):
            return  # exist_ok, and every one is linked already: nothing changes
        total = set(linked) | set(model_names)
        if app.policy == "single" and len(total) > 1:
            raise ValidationError(
                f"application '{app_name}' uses the 'single' selection policy, which takes "
                f"exactly one linked model (already linked: {linked or 'none'})"
            )
        self.store.add_links(app_name, model_names)
        log.info("linked %s to app %s", ", ".join(model_names), app_name)
        await self._changed()

    async def remove_links(self, app_name: str, model_names: list[str]) -> None:
        if self.store.get_app(app_name) is None:
            raise ValidationError(f"application '{app_name}' does not exist")
        linked = self.store.get_links(app_name)
        for name in model_names:
            if name not in linked:  # a typo would otherwise "succeed" and change nothing
                if not self.store.list_models(name):
                    raise ValidationError(f"no model named '{name}'")
                raise ValidationError(f"model '{name}' is not linked to application '{app_name}'")
            self._refuse_during_rollout(name, f"unlinking from application '{app_name}'")
        self.store.remove_links(app_name, model_names)
        await self._changed()

    def get_linked_models(self, app_name: str) -> list[str]:
        return self.store.get_links(app_name)

    # -- rollouts --------------------------------------------------------------

    def _rollout(self, model: str) -> RolloutSpec | None:
        # The store, not the catalog: another frontend may have started one.
        return next((r for r in self.store.list_rollouts() if r.model == model), None)

    @staticmethod
    def _rollout_running(rollout: RolloutSpec, doing: str) -> ValidationError:
        return ValidationError(
            f"{doing} model '{rollout.model}' is refused while its {rollout.mode} rollout of "
            f"version '{rollout.new_version}' (from '{rollout.base_version}') runs: "
            "stop it first (stop_rollout, or clipper rollout stop)"
        )

    def _refuse_during_rollout(self, model: str, doing: str) -> None:
        rollout = self._rollout(model)
        if rollout is not None:
            raise self._rollout_running(rollout, doing)

    async def start_rollout(
        self,
        model: str,
        version: str,
        mode: str,
        fraction: float | None = None,
        limits: Mapping[str, float] | None = None,
        steps: list[list[float]] | None = None,
    ) -> dict[str, Any]:
        """Start rolling ``version`` of ``model`` out against its current version.

        Calling it again for the same model and version changes the mode,
        fraction, limits or steps (a canary's schedule still counts from the
        first start); for another version while one runs it is an error. The
        new version keeps the replicas it was deployed with: one with none is
        accepted (a canary's share then gets the default output) with a
        ``warning`` in the answer.
        """
        try:
            validate_name(model, "model name")
            validate_name(version, "model version")
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        self._model(model, version)
        current = self.store.get_current_version(model)
        if current is None:
            raise ValidationError(
                f"model '{model}' has no current version to roll out from: "
                "set one with set_model_version first"
            )
        running = self._rollout(model)
        if running is not None and running.new_version != version:
            raise ValidationError(
                f"model '{model}' already has a {running.mode} rollout of version "
                f"'{running.new_version}' running: stop it first"
            )
        if running is None and version == current:
            raise ValidationError(
                f"version '{version}' is model '{model}''s current version already: "
                "roll out another version"
            )
        base = running.base_version if running is not None else current
        started = running.started_at if running is not None else self.clock()
        spec = RolloutSpec.build(model, base, version, mode, fraction, limits, steps, started)
        answer = self._rollout_json(spec)
        replicas = self.replica_target(
            ModelId(model, version), self.store.get_num_replicas(model, version)
        )
        new_model = self._model(model, version)
        if replicas == 0 and not new_model.options.autoscaled:
            answer["warning"] = (
                f"version '{version}' has 0 replicas: its share of the queries gets the "
                "default output until you give it some (set_num_replicas)"
            )
            log.warning("rollout of %s:%s: %s", model, version, answer["warning"])
        self.store.put_rollout(spec)
        log.info(
            "%s %s rollout of %s:%s from version %s (fraction %g%s%s)",
            "changed the" if running is not None else "started a",
            spec.mode,
            model,
            version,
            base,
            spec.fraction,
            f", limits {dict(spec.limits)}" if spec.limits else "",
            f", steps {list(spec.steps)}" if spec.steps else "",
        )
        # _changed() also asks the manager for the new version's replicas.
        await self._changed()
        return answer

    async def stop_rollout(
        self, model: str, promote: bool = False, reason: str = "by hand"
    ) -> dict[str, Any]:
        """End a model's rollout: with ``promote`` the new version becomes the
        current one, else the current version stays. Either way the rollout's
        record and evidence are deleted, and one log line names the decision
        and ``reason``."""
        _check(isinstance(promote, bool), "promote must be true or false")
        rollout = self._rollout(model)
        if rollout is None:
            if not self.store.list_models(model):
                raise ValidationError(f"no model named '{model}'")
            raise ValidationError(f"model '{model}' has no rollout running")
        if promote:
            self._model(model, rollout.new_version)
            # The path set_model_version takes, past its guard: this ends the rollout.
            self._make_current(model, rollout.new_version)
        self.store.delete_rollout(model)
        current = self.store.get_current_version(model)
        decision = "promoted" if promote else "rolled back"
        log.info(
            "rollout of %s:%s %s (%s); version %s serves %s",
            model,
            rollout.new_version,
            decision,
            reason,
            current,
            model,
        )
        await self._changed()
        return {
            "model": model,
            "new_version": rollout.new_version,
            "promoted": promote,
            "current_version": current,
            "reason": reason,
        }

    def _rollout_json(self, spec: RolloutSpec) -> dict[str, Any]:
        return {**spec.to_record(), "fraction_now": spec.fraction_at(self.clock())}

    def get_rollouts(self) -> list[dict[str, Any]]:
        """The rollouts running, by model, each with the query path's live
        ``figures`` (or the last evidence stored, when this process has none)."""
        out = []
        for spec in self.store.list_rollouts():
            entry = self._rollout_json(spec)
            figures: dict[str, Any] | None = None
            if self.rollout_report is not None:
                try:
                    figures = self.rollout_report(spec.model)
                except Exception:
                    log.exception("the figures of the rollout of %s failed", spec.model)
            if figures is None:
                figures = self.store.get_rollout_evidence(spec.model)
            entry["figures"] = figures or {}
            out.append(entry)
        return out


def _digest(data: bytes) -> str:
    """How ``exist_ok`` compares artifacts (and names them in an error)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def _app_fields(app: AppSpec) -> dict[str, Any]:
    """An app's definition, as ``exist_ok`` compares it (its name aside)."""
    fields = app.to_json()
    del fields["name"]
    return fields
