"""Write a Keras classifier's inference graph and weights, plus test points, to one .npz
that `replay.py` rebuilds as a PyTorch module without TensorFlow.

Only for benchmarks and cross-checks with PyTorch attack libraries: the file holds
the layer list (JSON under ``__graph__``), each layer's weights under
``LAYER/NAME``, and optionally ``x`` (NHWC images in [0, 1]), ``y`` and ``logits``
(the Keras model's own logits on ``x``, so the PyTorch side can prove it computes
the same function before attacking it).

    python benchmarks/torch_bridge/export_graph.py runs/fm/*/last.keras --out-dir aa/ --final-points 500

``--final-points N`` stores the points ``sglr reproduce``'s final attacks use for that
run (N seeded test points outside the run's ``selection_points.json``), so numbers
from the PyTorch side line up with the run's own final evaluation.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

# Layer types the replay knows, with the config keys it needs.
_SUPPORTED = {
    "InputLayer": (),
    "Conv2D": ("strides", "padding", "use_bias", "activation"),
    "ZeroPadding2D": ("padding",),
    "BatchNormalization": ("epsilon", "center", "scale"),
    "ReLU": (),
    "Activation": ("activation",),
    "Add": (),
    "GlobalAveragePooling2D": (),
    "Flatten": (),
    "MaxPooling2D": ("pool_size", "strides", "padding"),
    "Dense": ("activation", "use_bias"),
    "Dropout": (),
}


def _inbound_names(layer) -> list[str]:
    node = layer._inbound_nodes[0]
    return [tensor._keras_history.operation.name for tensor in node.input_tensors]


def graph_of(model: keras.Model) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The layers of a functional model in execution order and their weights."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("only single-input, single-output models can be exported")
    ops, arrays = [], {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in _SUPPORTED:
            raise ValueError(f"layer {layer.name} of type {kind} has no PyTorch replay")
        if kind == "ReLU" and (layer.max_value is not None or layer.negative_slope or layer.threshold):
            raise ValueError(f"layer {layer.name}: only a plain ReLU has a replay")
        config = layer.get_config()
        op = {"name": layer.name, "type": kind, "inputs": [] if kind == "InputLayer" else _inbound_names(layer),
              "config": {key: config[key] for key in _SUPPORTED[kind]}}
        for variable in layer.weights:
            arrays[f"{layer.name}/{variable.path.split('/')[-1]}"] = np.asarray(variable.numpy(), np.float32)
        ops.append(op)
    ops[-1]["output"] = True
    if ops[-1]["name"] != model.outputs[0]._keras_history.operation.name:
        raise ValueError("the model's output is not its last layer")
    return ops, arrays


def write(path: str, model: keras.Model, x: np.ndarray | None = None, y: np.ndarray | None = None,
          batch_size: int = 250, indices: np.ndarray | None = None) -> None:
    ops, arrays = graph_of(model)
    extra = {}
    if x is not None:
        logits = np.concatenate([np.asarray(model(x[i:i + batch_size], training=False))
                                 for i in range(0, len(x), batch_size)])
        extra = {"x": np.asarray(x, np.float32), "y": np.asarray(y, np.int64), "logits": logits.astype(np.float32)}
    if indices is not None:  # test-set indices of the points, to match them with the run's final evaluation
        extra["indices"] = np.asarray(indices, np.int64)
    np.savez_compressed(path, __graph__=np.array(json.dumps(ops)), **arrays, **extra)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help=".keras classifiers (in run folders, for --final-points)")
    parser.add_argument("--out-dir", required=True, help="writes RUN__CHECKPOINT.npz here")
    parser.add_argument("--final-points", type=int, default=0,
                        help="also store the first N points of each run's final evaluation")
    parser.add_argument("--seed", type=int, default=0, help="the final evaluation's seed")
    args = parser.parse_args()

    from pathlib import Path

    from sglr_keras import checkpoints
    from sglr_keras.data import load_dataset
    from sglr_keras.errors import UserError
    from sglr_keras.runs import final_test_indices
    from sglr_keras.runs import read_selection_points

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundles = {}
    for checkpoint in map(Path, args.checkpoints):
        model = checkpoints.load_classifier(checkpoint)
        x = y = indices = None
        if args.final_points:
            data = checkpoints.run_info_for(checkpoint)["config"]["data"]
            key = (data["dataset"], data.get("data_dir"))
            bundles[key] = bundles.get(key) or load_dataset(*key)
            try:  # the points sglr reproduce's final attacks use for this run
                indices = final_test_indices(bundles[key], checkpoint.parent, read_selection_points(checkpoint.parent),
                                             args.final_points, args.seed)
            except UserError as err:
                raise SystemExit(str(err))
            x, y = bundles[key].test_points(indices)
        out = out_dir / f"{checkpoint.parent.name}__{checkpoint.stem}.npz"
        write(str(out), model, x, y, indices=indices)
        print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
