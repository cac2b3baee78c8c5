"""Query a Clipper app with the standard KServe v2 / Triton client (tritonclient).

    pip install 'tritonclient[http]'
    python examples/oip_client.py 127.0.0.1:1337 digits 0.5 1.5 2.0
    python examples/oip_client.py 127.0.0.1:1337 greeter hello world

Each app is a model of the same name. The script reads the app's metadata to
pick the input datatype: numeric apps get the values as one query (a
``[1, k]`` tensor), other apps one query per value (a BYTES ``[N]`` tensor).
It prints the output tensor and, for rows that got the app's default output,
the explanation Clipper gives.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the query frontend's host:port, e.g. 127.0.0.1:1337")
    parser.add_argument("app", help="the application (model) to query")
    parser.add_argument("values", nargs="+", help="the input: numbers, or strings")
    parser.add_argument("--json", action="store_true", help="send and receive JSON, not binary")
    args = parser.parse_args(argv)

    with httpclient.InferenceServerClient(url=args.url) as client:
        try:
            meta = client.get_model_metadata(args.app)
        except InferenceServerException as exc:
            print(f"error: {exc.message()}", file=sys.stderr)
            return 1
        spec = meta["inputs"][0]
        if spec["datatype"] == "BYTES":
            data = np.array([v.encode() for v in args.values], dtype=np.object_)
        else:
            data = np.array([[float(v) for v in args.values]])
            data = data.astype(triton_to_np_dtype(spec["datatype"]))
        tensor = httpclient.InferInput(spec["name"], list(data.shape), spec["datatype"])
        tensor.set_data_from_numpy(data, binary_data=not args.json)
        output = httpclient.InferRequestedOutput("output0", binary_data=not args.json)
        try:
            result = client.infer(args.app, [tensor], outputs=[output])
        except InferenceServerException as exc:
            print(f"error: {exc.message()}", file=sys.stderr)
            return 1

    response = result.get_response()
    answer = result.as_numpy("output0")
    if answer.dtype == np.object_:  # BYTES: text, or JSON text for structured outputs
        answer = np.array([a.decode() if isinstance(a, bytes) else a for a in answer.ravel()])
    print(f"model {response['model_name']} version {response['model_version']}")
    print(f"output0 ({response['outputs'][0]['datatype']}): {answer.tolist()}")
    params = response.get("parameters", {})
    for row, (default, why) in enumerate(
        zip(
            params.get("clipper_default", []),
            params.get("clipper_default_explanation", []),
            strict=True,
        )
    ):
        if default:
            print(f"row {row}: the app's default output ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
