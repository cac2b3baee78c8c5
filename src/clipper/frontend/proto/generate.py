"""Regenerate ``grpc_predict_v2_pb2.py``, ``_pb2_grpc.py`` and ``_pb2.pyi`` from the
``.proto`` beside this file (``python -m clipper.frontend.proto.generate``).

Needs ``grpcio-tools`` (the dev extra), whose protoc matches the protobuf
runtime the project pins. The generated descriptors go to a private pool, not
protobuf's default one, so importing ``tritonclient.grpc`` (same message names)
in the same process does not clash.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2]  # the folder that holds the clipper package
PROTO = "clipper/frontend/proto/grpc_predict_v2.proto"
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL = "POOL.AddSerializedFile("


def main() -> int:
    from grpc_tools import protoc  # a dev dependency

    code = protoc.main(
        [
            "protoc",
            f"-I{SRC}",
            f"--python_out={SRC}",
            f"--pyi_out={SRC}",
            f"--grpc_python_out={SRC}",
            str(SRC / PROTO),
        ]
    )
    if code != 0:
        return int(code)
    module = HERE / "grpc_predict_v2_pb2.py"
    text = module.read_text()
    if DEFAULT_POOL not in text:
        print(f"{module}: the generated code changed shape; check the pool rewrite")
        return 1
    text = text.replace(
        DEFAULT_POOL,
        f"{PRIVATE_POOL}",
    ).replace(
        "_sym_db = _symbol_database.Default()",
        "_sym_db = _symbol_database.Default()\n"
        "POOL = _descriptor_pool.DescriptorPool()  # private: see clipper.frontend.proto",
    )
    module.write_text(text)
    print(f"generated {module.name}, grpc_predict_v2_pb2_grpc.py and grpc_predict_v2_pb2.pyi")
    return 0


if __name__ == "__main__":
    sys.exit(main())
