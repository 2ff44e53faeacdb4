"""What a SavedModel's graphs contain: every op type, in the graph and in every library function.

Run as a script in a fresh interpreter (the core-ops test does), it prints one JSON line: the scan
below, the op registry of that interpreter, which of tensorflow_text / caption_app / export /
keras_cv it imported (none), and the outputs of `serving_default` on a generated PNG plus bytes
that are not an image, loaded both ways: `tf.saved_model.load`, and a TF1 Session that runs the
signatures by tensor name and replays the warmup records, as TensorFlow Serving does.
"""

from __future__ import annotations

import json
import sys

import tensorflow as tf
from tensorflow.core.framework import op_def_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.client import pywrap_tf_session
from tensorflow.python.framework import op_def_registry

XLA_ATTRS = ("_XlaMustCompile", "_XlaCompile")


def scan(path: str) -> dict:
    """{"ops": op types, "unregistered": those not in this process's op registry,
    "xla": where an XLA-compile attribute is true, "functions": library function count}."""
    proto = saved_model_pb2.SavedModel()
    with open(f"{path}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    ops, xla, functions = set(), [], set()
    for graph in proto.meta_graphs:
        library = graph.graph_def.library
        functions |= {fn.signature.name for fn in library.function}
        nodes = [("graph", node) for node in graph.graph_def.node]
        for fn in library.function:
            nodes += [(fn.signature.name, node) for node in fn.node_def]
            xla += [(fn.signature.name, key) for key in XLA_ATTRS if key in fn.attr and fn.attr[key].b]
        for where, node in nodes:
            ops.add(node.op)
            xla += [(where, node.name, key) for key in XLA_ATTRS if key in node.attr and node.attr[key].b]
    op_types = sorted(ops - functions)  # a node may call a library function by its name
    return {"ops": op_types, "unregistered": [op for op in op_types if op_def_registry.get(op) is None],
            "xla": xla, "functions": len(functions)}


def registered_ops() -> list[str]:
    """Every op type registered in this process."""
    ops = op_def_pb2.OpList()
    ops.ParseFromString(pywrap_tf_session.TF_GetBuffer(pywrap_tf_session.TF_GetAllOpList()))
    return sorted(op.name for op in ops.op)


def run_in_session(path: str, requests: list[tuple[str, dict]]) -> list[dict]:
    """Loads `path` into a TF1 Session and runs (signature, {input: array}) requests by the
    signatures' tensor names: how TensorFlow Serving's C++ loader serves a SavedModel."""
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        results = []
        for name, inputs in requests:
            signature = meta_graph.signature_def[name]
            feeds = {signature.inputs[key].name: value for key, value in inputs.items()}
            results.append(session.run({key: t.name for key, t in signature.outputs.items()}, feeds))
        return results


def warmup_requests(path: str) -> list[tuple[str, dict]]:
    """assets.extra/tf_serving_warmup_requests as (signature, {input: array})."""
    from tensorflow_serving.apis import prediction_log_pb2  # protos only: registers no ops

    requests = []
    for record in tf.data.TFRecordDataset(f"{path}/assets.extra/tf_serving_warmup_requests"):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        requests.append((request.model_spec.signature_name,
                         {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}))
    return requests


def main(path: str) -> None:
    report = scan(path)
    image = tf.io.encode_png(tf.cast(tf.random.stateless_uniform([40, 40, 3], [1, 2], 0, 255), tf.uint8))
    batch = [image.numpy(), b"not an image"]
    out = tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant(batch))
    session_out, *warmup_out = run_in_session(path, [("serving_default", {"image_bytes": batch})]
                                              + warmup_requests(path))
    report.update(
        valid=out["valid"].numpy().tolist(), captions=out["captions"].numpy().astype(str).tolist(),
        log_probs=out["log_probs"].numpy().tolist(),
        session_valid=session_out["valid"].tolist(), session_captions=session_out["captions"].astype(str).tolist(),
        session_log_probs=session_out["log_probs"].tolist(),
        warmup_outputs=[sorted(o) for o in warmup_out],
        registry=registered_ops(),
        modules=sorted(m for m in sys.modules
                       if m.split(".")[0] in ("tensorflow_text", "caption_app", "export", "keras_cv")))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])


def documented_state_tensors() -> dict[str, list[tuple[str, str]]]:
    """docs/serving.md's state-tensor table: {first cell's leading `decoder` word + options: [(name, width
    expression)]}, keyed "lstm", "lstm+image" (image_every_step / image_logits), "lstm+attention"."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text(encoding="utf-8")
    table = text.split("<!-- state tensors:", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[3:]:  # after the comment, the header and the rule
        first, second = [cell.strip() for cell in line.strip().strip("|").split("|")]
        key = re.match(r"`(\w+)`", first).group(1)
        key += "+attention" if "attention_size" in first else "+image" if "image_every_step" in first else ""
        rows[key] = re.findall(r"`(\w+)` ([\w+*]+)", second)
    return rows


def check_state_against_docs(path: str, row: str, **sizes: int) -> None:
    """The export at `path`: encode_image's outputs, decode_step's state inputs and outputs are the
    documented row's tensors (names, float32, widths evaluated with `sizes`: H, E, L, A)."""
    documented = documented_state_tensors()[row]
    want = {name: eval(width, {"__builtins__": {}}, sizes) for name, width in documented}  # noqa: S307
    signatures = tf.saved_model.load(path).signatures
    encode = signatures["encode_image"].structured_outputs
    step_in = signatures["decode_step"].structured_input_signature[1]
    step_out = signatures["decode_step"].structured_outputs
    assert {k: v.shape.as_list() for k, v in encode.items()} == {k: [None, w] for k, w in want.items()}
    assert {k: v.shape.as_list() for k, v in step_in.items() if k != "input_ids"} == \
        {k: [None, w] for k, w in want.items()}
    assert {k for k in step_out if k != "log_probs"} == set(want)
    assert all(v.dtype == tf.float32 for k, v in {**encode, **step_in}.items() if k != "input_ids")
    described = json.load(open(f"{path}/assets/config.json"))["state"]
    assert described == want  # assets/config.json "state" says the same (by name: clients feed by name)
