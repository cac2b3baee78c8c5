"""``python -m clipper.container``: run a model container.

The model comes from a cloudpickle file (``--model-path``, what the
deployers write) or an import spec (``--model-import pkg.module:attr``). The
frontend address comes from ``--address`` or ``$CLIPPER_RPC_ADDRESS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from ..address import ServerAddress
from ..settings import parse_cpu_list
from .runtime import ContainerRuntime


def load_model(path: str | None, import_spec: str | None) -> Any:
    """Load the model object from a cloudpickle file or a ``module:attr`` spec."""
    if path:
        import cloudpickle

        from . import code

        # Code shipped with the model (code_paths) unpacks beside its artifact.
        code.CODE_ROOT = Path(path).resolve().parent / "code"
        with open(path, "rb") as f:
            return cloudpickle.load(f)
    if import_spec:
        module_name, _, attr = import_spec.partition(":")
        if not attr:
            raise SystemExit(
                f"--model-import must look like 'package.module:attr', got {import_spec!r}"
            )
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    raise SystemExit("one of --model-path or --model-import is required")


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m clipper.container",
        description="Serve one model version to a Clipper frontend.",
    )
    parser.add_argument(
        "--address",
        default=env("CLIPPER_RPC_ADDRESS", ServerAddress().rpc_url),
        help="the frontend's RPC address: tcp://host:port, or unix://<path> for a frontend "
        "on this host (its <state_dir>/run/rpc-<port>.sock) (default: $CLIPPER_RPC_ADDRESS "
        "or %(default)s)",
    )
    parser.add_argument(
        "--model-name", default=env("CLIPPER_MODEL_NAME"), required=not env("CLIPPER_MODEL_NAME")
    )
    parser.add_argument("--model-version", default=env("CLIPPER_MODEL_VERSION", "1"))
    parser.add_argument("--input-type", default=env("CLIPPER_INPUT_TYPE", "doubles"))
    parser.add_argument(
        "--model-path",
        default=env("CLIPPER_MODEL_PATH"),
        help="a cloudpickle file holding the model (a callable or an object with predict)",
    )
    parser.add_argument(
        "--model-import",
        default=env("CLIPPER_MODEL_IMPORT"),
        help="import the model from 'package.module:attr'",
    )
    parser.add_argument(
        "--replica", default=env("CLIPPER_REPLICA"), help="a label for this replica"
    )
    parser.add_argument("--heartbeat-interval", type=float, default=0.5)
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the parent process exits (used by the local manager)",
    )
    parser.add_argument(
        "--memory-limit-mb",
        type=int,
        default=None,
        help="cap this process's address space (a leaking model then gets MemoryError)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=int(env("CLIPPER_NICE", "0") or 0),
        help="lower this process's CPU priority by this much (0-19) before the model "
        "loads, so a query frontend sharing its cores preempts it (the local manager "
        "passes the server's replica_nice)",
    )
    parser.add_argument(
        "--cpus",
        default=env("CLIPPER_CPUS", ""),
        help="run on these CPUs only (0-2,5), set before the model loads; the local "
        "manager passes the server's replica_cpus",
    )
    parser.add_argument("--log-level", default=env("CLIPPER_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s container[{args.model_name}:{args.model_version}]"
        " %(message)s",
    )
    if args.cpus:
        # Before the model loads and any thread starts: threads inherit it.
        os.sched_setaffinity(0, parse_cpu_list(args.cpus))
    if args.nice > 0:
        # Before the model loads and any thread starts: threads inherit it.
        os.nice(min(args.nice, 19))
    if args.memory_limit_mb:
        limit = args.memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    model = load_model(args.model_path, args.model_import)
    runtime = ContainerRuntime(
        model,
        address=args.address,
        model_name=args.model_name,
        model_version=args.model_version,
        input_type=args.input_type,
        heartbeat_interval=args.heartbeat_interval,
        exit_with_parent=args.exit_with_parent,
        replica_label=args.replica,
        # From the environment only: argv is visible to every user of the machine.
        secret=os.environ.get("CLIPPER_RPC_SECRET") or None,
        server_key=os.environ.get("CLIPPER_RPC_SERVER_KEY", "").encode() or None,
    )
    signal.signal(signal.SIGTERM, lambda *_: runtime.stop())
    signal.signal(signal.SIGINT, lambda *_: runtime.stop())
    return runtime.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
