"""Evaluate any saved classifier (a .keras file or a SavedModel) and export a
.keras file as a SavedModel that TF Serving loads as it is.

    python examples/evaluate_and_export.py model.keras --dataset digits --eps 0.1 --export-dir exported
"""

import argparse

import keras
import numpy as np

import sglr_keras as sk


def load(path: str):
    """A .keras file as a Keras model; a SavedModel folder as a callable Keras layer."""
    if path.endswith(".keras"):
        return keras.saving.load_model(path, compile=False)
    return keras.layers.TFSMLayer(path, call_endpoint="serving_default")


def main(path: str, dataset: str, eps: float, points: int, export_dir: str | None, tiny: bool = False):
    bundle = sk.load_dataset(dataset)
    x, y = bundle.test_subset(points)
    model = load(path)
    if isinstance(model, keras.layers.TFSMLayer):
        # A SavedModel's endpoint returns a dict of outputs; attacks need the logits.
        inputs = keras.Input(x.shape[1:])
        outputs = model(inputs)
        model = keras.Model(inputs, outputs["logits"] if isinstance(outputs, dict) else outputs)
    attacks = ["pgd"] if tiny else ["pgd", "cw", "autoattack"]
    report = sk.evaluate(model, x, y, attacks=attacks, eps=eps)
    print(report.table())
    if export_dir and path.endswith(".keras"):
        card = {"dataset": dataset, "class_names": bundle.class_names, "evaluation": report.to_dict()}
        target = sk.export_saved_model(model, export_dir, "classifier", card=card)
        print(f"SavedModel for TF Serving: {target}")
        served = keras.layers.TFSMLayer(str(target), call_endpoint="serving_default")
        logits = served(x[:4])
        logits = logits["logits"] if isinstance(logits, dict) else logits
        print("served logits agree:", bool(np.allclose(np.asarray(logits), np.asarray(model(x[:4])), atol=1e-4)))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .keras file or an exported SavedModel folder")
    parser.add_argument("--dataset", default="digits", help="the data set whose test split to evaluate on")
    parser.add_argument("--eps", type=float, default=8 / 255, help="L-inf radius")
    parser.add_argument("--points", type=int, default=200, help="how many seeded test points")
    parser.add_argument("--export-dir", help="also export the .keras model as a SavedModel here")
    parser.add_argument("--tiny", action="store_true", help="PGD only (the test suite's run)")
    args = parser.parse_args()
    main(args.model, args.dataset, args.eps, args.points, args.export_dir, args.tiny)
