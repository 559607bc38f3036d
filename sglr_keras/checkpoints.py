"""Loading classifiers for evaluation: ``.keras`` files (safe mode) from any
source, checked against the data they will be evaluated on."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras

from sglr_keras.errors import UserError
from sglr_keras.models.fused_batchnorm import use_fused_batch_norm
from sglr_keras.runs import folder as runs_folder
from sglr_keras.runs.folder import RunFolder, read_record, read_selection_points


def load_classifier(path: str | Path):
    """Load a ``.keras`` classifier with Keras's safe mode (no arbitrary code),
    its batch norm on the fused kernels as in training, or an exported
    SavedModel folder (``DIR/NAME/VERSION``)."""
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
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises many types for a bad archive
        if "Lambda" in str(err):
            raise UserError(f"checkpoint '{path}' holds a Lambda layer, whose Python code safe loading refuses to "
                            "run; rebuild the model with ordinary Keras layers and save it again")
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"cannot load checkpoint '{path}' ({first_line}); use another checkpoint")
    use_fused_batch_norm(model)  # as in training, so evaluation computes what training's evaluation did
    return model


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
        return {"run": {"dataset": card.get("dataset")}, "config": card.get("config", {}),
                "selection_test_indices": card.get("selection_test_indices")} if card else {}
    folder = RunFolder(checkpoint.resolve().parent)
    info = {}
    # A corrupt record is refused, never skipped: without the selection points an
    # evaluation of best.keras would silently include the points that picked it.
    selection = read_selection_points(folder.path)
    if selection is not None:
        info["selection_test_indices"] = selection["test_indices"]
    for key, path in (("run", folder.facts), ("config", folder.config)):
        record = read_record(path, "rerun the same sglr train command to rewrite it")
        if record is not None:
            info[key] = record
    return info


def evaluation_record_path(checkpoint: str | Path) -> Path:
    return runs_folder.evaluation_record_path(checkpoint)


def checkpoint_digest(checkpoint: str | Path) -> str:
    """SHA-256 of a ``.keras`` file: an evaluation record names the exact weights."""
    import hashlib

    digest = hashlib.sha256()
    with open(checkpoint, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_evaluation(checkpoint: str | Path, report, settings: dict) -> None:
    """Keep what was measured beside a ``.keras`` checkpoint, tied to its content
    hash and to the full attack settings: one entry per (attack, settings), so a
    weaker evaluation never replaces a stronger one, and a record of other weights
    (the file was retrained or overwritten) is dropped."""
    from sglr_keras.io import atomic_write_text

    if Path(checkpoint).is_dir():
        return
    path = evaluation_record_path(checkpoint)
    digest = checkpoint_digest(checkpoint)
    entries = _read_record(path, digest)
    measured = {"clean": report.clean_accuracy, **{a.name: a.robust_accuracy for a in report.attacks}}
    for attack, accuracy in measured.items():
        entry = {"attack": attack, "accuracy": accuracy, "settings": settings}
        if attack == "autoattack":
            # e.g. "AutoAttack-L2 partial (APGD-CE + APGD-T)": the card says what ran.
            entry["label"] = report.autoattack_label
        entries = [e for e in entries if (e["attack"], e["settings"]) != (attack, settings)] + [entry]
    try:
        atomic_write_text(path, json.dumps({"checkpoint_sha256": digest, "entries": entries}, indent=2))
    except OSError:
        pass  # a read-only checkpoint folder still gets evaluated


def matching_evaluations(checkpoint: str | Path) -> list[dict]:
    """The recorded evaluations of exactly this checkpoint's weights (may be empty)."""
    if Path(checkpoint).is_dir() or not Path(checkpoint).is_file():
        return []
    return _read_record(evaluation_record_path(checkpoint), checkpoint_digest(checkpoint))


def headline_candidates(entries: list[dict], threat_model: dict) -> list[dict]:
    """The recorded evaluations a model card may headline: those measured under
    the model's training threat model (``norm``, ``eps``) on the held-out points
    of the run's own test split (``dataset``; the points that picked the best
    epoch left out when the run recorded them)."""
    def matches(settings: dict) -> bool:
        if settings.get("norm", "Linf") != threat_model["norm"]:
            return False
        if threat_model.get("eps") is not None and abs(float(settings.get("eps", -1)) - threat_model["eps"]) > 1e-9:
            return False
        if threat_model.get("dataset") is not None and settings.get("dataset") != threat_model["dataset"]:
            return False
        if settings.get("data_dir") not in (None, threat_model.get("data_dir")):
            return False
        return not (threat_model.get("selection_points") and not settings.get("excluded_selection_points"))

    return [e for e in entries if matches(e["settings"])]


def card_summary(entries: list[dict], threat_model: dict | None = None) -> dict:
    """One line per attack for a model card, from the evaluations that match the
    training threat model (:func:`headline_candidates`): the field's default
    budget before a custom one, then the most points, then the lowest accuracy
    (the conservative claim). Each line carries its settings."""
    if threat_model is not None:
        entries = headline_candidates(entries, threat_model)
    chosen = {}
    for entry in entries:
        key = entry["attack"]
        settings = entry["settings"]
        default_budget = settings.get("steps") is None and settings.get("step_size") is None
        rank = (default_budget, settings.get("n_examples", 0), -entry["accuracy"])
        if key not in chosen or rank > chosen[key][0]:
            chosen[key] = (rank, entry)
    summary = {}
    for attack, (_, entry) in chosen.items():
        if attack == "clean":
            summary["clean_accuracy"] = {"value": entry["accuracy"], **entry["settings"]}
        else:
            summary[attack] = {"robust_accuracy": entry["accuracy"], **entry["settings"]}
            if entry.get("label"):
                summary[attack]["label"] = entry["label"]
    return summary


def training_threat_model(info: dict) -> dict:
    """What a run trained against and was selected on: norm, eps, data set, and
    whether it recorded selection points (then only evaluations without them count)."""
    config, run = info.get("config", {}), info.get("run", {})
    attack = config.get("attack", {}) if isinstance(config, dict) else {}
    data = config.get("data", {}) if isinstance(config, dict) else {}
    return {"norm": "Linf", "eps": attack.get("eps"), "dataset": run.get("dataset") or data.get("dataset"),
            "data_dir": data.get("data_dir"), "selection_points": bool(info.get("selection_test_indices"))}


def _read_record(path: Path, digest: str) -> list[dict]:
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return []
    if not isinstance(record, dict) or record.get("checkpoint_sha256") != digest:
        return []
    return [e for e in record.get("entries", []) if isinstance(e, dict) and "attack" in e and "settings" in e]


def model_card(checkpoint: str | Path) -> dict:
    """What an export says about itself: data, classes, training, measured robustness."""
    info = run_info_for(checkpoint)
    run, config = info.get("run", {}), info.get("config", {})
    records = matching_evaluations(checkpoint)  # hashes the checkpoint: once
    threat_model = training_threat_model(info)
    evaluation = card_summary(records, threat_model)
    return {
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "dataset": run.get("dataset"),
        "num_classes": run.get("num_classes"),
        "class_names": run.get("class_names"),
        "method": run.get("method"),
        "arch": run.get("arch"),
        # How the network was initialised and padded ("torch" or "keras"; docs/method.md).
        "init": config.get("model", {}).get("init"),
        "padding": config.get("model", {}).get("padding"),
        "config": config,
        # The test points that picked the best epoch, so evaluations can leave them out.
        "selection_test_indices": info.get("selection_test_indices"),
        # Only evaluations of exactly these weights (content hash) under the training
        # threat model on unbiased held-out points, each with its settings.
        "threat_model": {k: threat_model[k] for k in ("norm", "eps", "dataset")},
        "evaluation": evaluation,
        "evaluation_note": None if evaluation else (
            "no recorded evaluation of this checkpoint matches its training threat model "
            f"({threat_model['norm']} eps {threat_model['eps']}) on held-out points of {threat_model['dataset']}"),
        "evaluation_records": records,
        "inputs": "images in [0, 1] (serving_default, float32) or [0, 255] (serving_uint8, uint8), NHWC",
    }
