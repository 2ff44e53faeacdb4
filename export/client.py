"""A TF Serving client for the export's `serving_default`, over REST or gRPC.

    python -m export.client --rest http://localhost:8501 IMAGE...
    python -m export.client --grpc localhost:8500 IMAGE...

Sends the files' bytes as they are (TF Serving's REST API takes them as
`{"b64": ...}`), prints each image's captions best first, or the image's
`valid=false` (bytes that do not decode, or declare more pixels than the export's `max_image_pixels`;
the others in the request are captioned). A server that cannot be reached is one error line
naming the address (exit code 2).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

import numpy as np

MODEL = "caption"
SIGNATURE = "serving_default"


class ServerError(RuntimeError):
    """The server could not be reached or refused the request (the message says where and what to do)."""


def rest_payload(images: list[bytes], signature: str = SIGNATURE) -> dict:
    """The JSON body of `POST /v1/models/<model>:predict` (columnar "inputs" form)."""
    return {"signature_name": signature,
            "inputs": {"image_bytes": [{"b64": base64.b64encode(data).decode("ascii")} for data in images]}}


def parse_rest_response(body: dict) -> list[dict]:
    """TF Serving's columnar response {"outputs": {name: [...]}} -> one dict per image."""
    out = body["outputs"]
    return _per_image(np.array(out["captions"], dtype=object), np.array(out["log_probs"], dtype=np.float64),
                      np.array(out["valid"], dtype=bool))


def caption_rest(url: str, images: list[bytes], model: str = MODEL, timeout: float = 60) -> list[dict]:
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/models/{model}:predict",
                                     data=json.dumps(rest_payload(images)).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return parse_rest_response(json.load(response))
    except urllib.error.HTTPError as err:
        detail = err.read(2000).decode("utf-8", "replace").strip().splitlines()
        raise ServerError(f"{request.full_url} answered HTTP {err.code} {err.reason}"
                          + (f": {detail[0]}" if detail else "") + f"; is model {model!r} served there?") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, ConnectionRefusedError):
            raise ServerError(f"nothing is listening at {url} (connection refused); start TF Serving with "
                              "--rest_api_port there, or pass the right --rest URL") from None
        raise ServerError(f"the TF Serving REST API at {url} is not reachable ({reason}); check the --rest "
                          "URL and that the server is up") from None
    except (TimeoutError, ConnectionError) as err:  # timed out or dropped after the connection was made
        raise ServerError(f"the TF Serving REST API at {url} did not answer ({type(err).__name__}: {err}); "
                          "check that the server is up") from None


def grpc_request(images: list[bytes], model: str = MODEL, signature: str = SIGNATURE):
    """A tensorflow_serving PredictRequest with `image_bytes` [B] string."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def parse_grpc_response(response) -> list[dict]:
    import tensorflow as tf

    out = {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}
    return _per_image(out["captions"], out["log_probs"], out["valid"])


def caption_grpc(target: str, images: list[bytes], model: str = MODEL, timeout: float = 60) -> list[dict]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    # Requests carry whole images: raise gRPC's 4 MB default message limit.
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(grpc_request(images, model), timeout=timeout)
        except grpc.RpcError as err:
            code, details = err.code(), (err.details() or "").strip()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise ServerError(f"the gRPC server at {target} is not reachable: nothing is listening there or it "
                                  f"is down ({details}); start TF Serving with --port there, or pass the right "
                                  "--grpc HOST:PORT") from None
            raise ServerError(f"the gRPC server at {target} answered {code.name}: {details}") from None
        return parse_grpc_response(response)


def _per_image(captions, log_probs, valid) -> list[dict]:
    """captions [B, K], log_probs [B, K], valid [B] -> [{"valid", "captions": [(text, log_prob)]}]."""
    results = []
    for row, ok in enumerate(valid):
        texts = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in captions[row]]
        results.append({"valid": bool(ok),
                        "captions": list(zip(texts, (float(lp) for lp in log_probs[row]))) if ok else []})
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.client", description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--rest", metavar="URL", help="e.g. http://localhost:8501")
    where.add_argument("--grpc", metavar="HOST:PORT", help="e.g. localhost:8500")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--verbose", action="store_true", help="keep TensorFlow's start-up lines (gRPC only)")
    p.add_argument("images", nargs="+")
    args = p.parse_args(argv)
    images = []
    for path in args.images:
        try:
            with open(path, "rb") as f:
                images.append(f.read())
        except OSError as err:
            print(f"error: cannot read image {path}: {err.strerror or err}", file=sys.stderr)
            return 2
    try:
        if args.rest:
            results = caption_rest(args.rest, images, args.model)
        else:
            from caption_app import quiet

            quiet.import_tensorflow(args.verbose)  # the request is a TensorProto: no start-up lines with it
            results = caption_grpc(args.grpc, images, args.model)
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, result in zip(args.images, results):
        print(path)
        if not result["valid"]:
            print("  not a decodable image")
        for i, (text, log_prob) in enumerate(result["captions"], 1):
            print(f"  {i}. {text}  (log p = {log_prob:.3f})")
    return 0 if all(r["valid"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
