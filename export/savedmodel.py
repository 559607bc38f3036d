"""Export a classifier as a SavedModel in TF Serving's layout ``DIR/NAME/VERSION/``.

Signatures (input ``images``, batch first):

- ``serving_default``: float32 (N, H, W, C) pixels in [0, 1];
- ``serving_uint8``: uint8 (N, H, W, C) pixels in [0, 255].

Both return ``probabilities`` float32 (N, K), ``logits`` float32 (N, K) and
``class_ids`` int64 (N,). A JSON model card (data set, class names, input
shape, training method and config, evaluation results) is written to
``assets.extra/model_card.json``, the folder TF Serving reserves for files that
travel with a model without being part of its graph.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from sglr_keras.errors import UserError
from sglr_keras.paths import check_path_component

CARD_PATH = Path("assets.extra") / "model_card.json"


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _outputs(model, images):
    logits = model(images, training=False)
    return {"probabilities": tf.nn.softmax(logits, axis=-1), "logits": logits,
            "class_ids": tf.argmax(logits, axis=-1, output_type=tf.int64)}


def _fixed_input_shape(model: keras.Model, input_shape=None) -> tuple[int, int, int]:
    shape = tuple(input_shape) if input_shape else tuple(model.input_shape[1:])
    if len(shape) != 3 or any(d is None or d <= 0 for d in shape):
        raise UserError(
            f"the model's input shape {shape} is not a fixed (H, W, C); pass --input-shape H,W,C"
        )
    if model.input_shape[1:] and any(
            m is not None and m != s for m, s in zip(model.input_shape[1:], shape)):
        raise UserError(f"--input-shape {shape} does not fit the model's input {model.input_shape[1:]}")
    return shape


def export_saved_model(model: keras.Model, out_dir: str | Path, name: str, version: int | None = None,
                       card: dict | None = None, input_shape=None) -> Path:
    """Write ``model`` as a SavedModel in ``out_dir/name/version`` (TF Serving's
    layout: the next free version if None), with ``card`` as its model card;
    refuses an existing version. Returns its path. Signatures: float32 images
    in [0, 1] (``serving_default``) and uint8 in [0, 255] (``serving_uint8``).

    >>> import keras
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    >>> path = export_saved_model(model, "/tmp/sglr-doctest-models", "digits")  # doctest: +SKIP
    """
    shape = _fixed_input_shape(model, input_shape)
    model_dir = Path(out_dir) / check_path_component("--name", name)
    version = version if version is not None else next_version(model_dir) if model_dir.is_dir() else 1
    if version < 1:
        raise UserError(f"--version {version} must be a positive whole number (TF Serving's version folders)")
    target = model_dir / str(version)
    if target.exists():
        raise UserError(f"'{target}' already exists; pass another --version (next free: {next_version(model_dir)})")
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write to '{model_dir}' ({err.strerror}); choose a writable --out")

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda images: _outputs(model, images),
        input_signature=[tf.TensorSpec((None, *shape), tf.float32, name="images")],
    )
    archive.add_endpoint(
        name="serving_uint8",
        fn=lambda images: _outputs(model, tf.cast(images, tf.float32) / 255.0),
        input_signature=[tf.TensorSpec((None, *shape), tf.uint8, name="images")],
    )
    # Written under a name TF Serving ignores (not a number), then renamed, so a
    # server watching the folder never sees a half-written version.
    temporary = model_dir / f".{version}.tmp-{os.getpid()}"
    try:
        archive.write_out(str(temporary), verbose=False)
        card_path = temporary / CARD_PATH
        card_path.parent.mkdir(parents=True, exist_ok=True)
        card_path.write_text(json.dumps({**(card or {}), "input_shape": list(shape)}, indent=2))
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
    return target


def read_card(saved_model_dir: str | Path) -> dict:
    """The model card of an export ({} if it has none)."""
    path = Path(saved_model_dir) / CARD_PATH
    return read_card_file(path) if path.is_file() else {}


def read_card_file(path: str | Path) -> dict:
    """A model card JSON file, or a UserError naming what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model card '{path}' does not exist; pass the export's assets.extra/model_card.json")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        card = None
    if not isinstance(card, dict):
        raise UserError(f"model card '{path}' is not a JSON object; pass the export's assets.extra/model_card.json")
    shape = card.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3
                                  and all(isinstance(d, int) and d > 0 for d in shape)):
        raise UserError(f"model card '{path}': input_shape must be three positive whole numbers, got {shape!r}")
    return card


class SavedModelClassifier:
    """A loaded SavedModel behaving like a Keras classifier for evaluation: it
    maps float [0, 1] images to logits through ``serving_default``, and its
    gradients flow, so attacks work on the exported artefact itself."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not (path / "saved_model.pb").is_file():
            raise UserError(f"'{path}' is not a SavedModel folder (no saved_model.pb); pass DIR/NAME/VERSION")
        try:
            self.loaded = tf.saved_model.load(str(path))
        except Exception as err:  # TF raises several types for a broken SavedModel
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise UserError(f"cannot load SavedModel '{path}' ({first_line}); export it again")
        if "serving_default" not in self.loaded.signatures:
            raise UserError(f"SavedModel '{path}' has no serving_default signature; export it with sglr export")
        self.signature = self.loaded.signatures["serving_default"]
        spec = self.signature.structured_input_signature[1]["images"]
        self.input_shape = tuple(spec.shape.as_list())
        self.output_shape = (None, int(self.signature.structured_outputs["logits"].shape[-1]))
        self.card = read_card(path)

    def __call__(self, images, training=False):
        return self.signature(images=tf.cast(images, tf.float32))["logits"]
