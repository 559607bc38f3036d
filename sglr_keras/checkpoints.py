"""Loading classifiers for evaluation: ``.keras`` files (safe mode) from any
source, checked against the data they will be evaluated on."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras

from sglr_keras.errors import UserError


def load_classifier(path: str | Path):
    """Load a ``.keras`` classifier with Keras's safe mode (no arbitrary code),
    or an exported SavedModel folder (``DIR/NAME/VERSION``)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint '{path}' does not exist; pass a .keras file written by sglr train or Keras")
    if path.is_dir():
        from sglr_keras.export.savedmodel import SavedModelClassifier

        return SavedModelClassifier(path)
    if path.suffix != ".keras":
        raise UserError(f"checkpoint '{path}' is not a .keras file; save the model with model.save('x.keras')")
    if not zipfile.is_zipfile(path):
        raise UserError(f"checkpoint '{path}' is corrupt (not a Keras archive); use another checkpoint")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises many types for a bad archive
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"cannot load checkpoint '{path}' ({first_line}); use another checkpoint")


def check_compatible(model: keras.Model, input_shape, num_classes: int, dataset: str) -> None:
    """Refuse a model whose input shape or class count differs from the data's."""
    model_input = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else None
    if model_input is not None and None not in model_input and model_input != tuple(input_shape):
        raise UserError(
            f"the checkpoint takes images of shape {model_input} but '{dataset}' has {tuple(input_shape)}; "
            "evaluate it on the data set it was trained on"
        )
    model_classes = model.output_shape[-1]
    if model_classes != num_classes:
        raise UserError(
            f"the checkpoint predicts {model_classes} classes but '{dataset}' has {num_classes}; "
            "evaluate it on the data set it was trained on"
        )


def run_info_for(checkpoint: str | Path) -> dict:
    """``run.json`` and ``config.json`` of the run folder a checkpoint sits in, if
    any; for a SavedModel, its model card's ``run`` and ``config``."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        from sglr_keras.export.savedmodel import read_card

        card = read_card(checkpoint)
        return {"run": {"dataset": card.get("dataset")}, "config": card.get("config", {})} if card else {}
    folder = checkpoint.resolve().parent
    info = {}
    for name in ("run.json", "config.json"):
        path = folder / name
        if path.is_file():
            try:
                info[name[:-5]] = json.loads(path.read_text())
            except json.JSONDecodeError:
                pass
    return info


def evaluation_record_path(checkpoint: str | Path) -> Path:
    return Path(str(checkpoint) + ".eval.json")


def record_evaluation(checkpoint: str | Path, results: dict) -> None:
    """Keep the latest result per attack beside a ``.keras`` checkpoint, so that an
    export can carry what was measured."""
    from sglr_keras.io import atomic_write_text

    path = evaluation_record_path(checkpoint)
    if Path(checkpoint).is_dir():
        return
    record = {}
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            record = {}
    settings = {k: results[k] for k in ("dataset", "n_examples", "eps", "norm", "seed")}
    record["clean_accuracy"] = {"value": results["clean_accuracy"], **settings}
    for attack, accuracy in results["robust_accuracy"].items():
        record[attack] = {"robust_accuracy": accuracy, **settings}
    try:
        atomic_write_text(path, json.dumps(record, indent=2))
    except OSError:
        pass  # a read-only checkpoint folder still gets evaluated


def model_card(checkpoint: str | Path) -> dict:
    """What an export says about itself: data, classes, training, measured robustness."""
    info = run_info_for(checkpoint)
    run, config = info.get("run", {}), info.get("config", {})
    evaluation = {}
    record = evaluation_record_path(checkpoint)
    if record.is_file():
        evaluation = json.loads(record.read_text())
    return {
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "dataset": run.get("dataset"),
        "num_classes": run.get("num_classes"),
        "class_names": run.get("class_names"),
        "method": run.get("method"),
        "arch": run.get("arch"),
        "config": config,
        "evaluation": evaluation,
        "inputs": "images in [0, 1] (serving_default, float32) or [0, 255] (serving_uint8, uint8), NHWC",
    }
