"""Clients for an exported model: TF Serving's REST predict API, or the
SavedModel loaded locally. Both send uint8 images to the ``serving_uint8``
signature by default (exact, and a quarter of the JSON of float pixels)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import tensorflow as tf

from sglr_keras.errors import UserError


def load_images(paths, input_shape, resize: bool = False) -> np.ndarray:
    """Decode PNG/JPEG/BMP/GIF files into a uint8 (N, H, W, C) batch for the model."""
    height, width, channels = input_shape
    images = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"image '{path}' does not exist")
        try:
            image = tf.io.decode_image(path.read_bytes(), channels=channels, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            raise UserError(f"'{path}' is not a PNG, JPEG, BMP or GIF image")
        if tuple(image.shape[:2]) != (height, width):
            if not resize:
                raise UserError(f"image '{path}' is {image.shape[1]}x{image.shape[0]} but the model takes "
                                f"{width}x{height}; pass --resize to scale it")
            image = tf.cast(tf.round(tf.image.resize(image, (height, width))), tf.uint8)
        images.append(image.numpy())
    return np.stack(images)


def rest_request_body(images: np.ndarray, signature: str = "serving_uint8", form: str = "instances") -> dict:
    """The JSON body of TF Serving's REST predict API for one named input.

    Row form: ``{"signature_name": S, "instances": [image, ...]}`` (a single named
    input is given as its value, without its name); columnar form:
    ``{"signature_name": S, "inputs": {"images": [image, ...]}}``.
    """
    values = images.tolist()
    if form == "instances":
        return {"signature_name": signature, "instances": values}
    if form == "inputs":
        return {"signature_name": signature, "inputs": {"images": values}}
    raise ValueError(f"form must be 'instances' or 'inputs', got {form!r}")


def predict_url(server: str, model: str, version: int | None = None) -> str:
    base = server.rstrip("/")
    if not base.startswith(("http://", "https://")):
        base = "http://" + base
    return f"{base}/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"


def parse_rest_response(body: dict) -> dict[str, np.ndarray]:
    """Outputs by name from a row-form (``predictions``) or columnar (``outputs``) response."""
    if "error" in body:
        raise UserError(f"TF Serving answered with an error: {body['error']}")
    if "predictions" in body:
        rows = body["predictions"]
        return {key: np.asarray([row[key] for row in rows]) for key in rows[0]} if rows else {}
    if "outputs" in body:
        return {key: np.asarray(value) for key, value in body["outputs"].items()}
    raise UserError("TF Serving's answer has neither 'predictions' nor 'outputs'")


def predict_rest(server: str, model: str, images: np.ndarray, version: int | None = None,
                 timeout: float = 30.0) -> dict[str, np.ndarray]:
    url = predict_url(server, model, version)
    data = json.dumps(rest_request_body(images)).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return parse_rest_response(json.loads(response.read()))
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:200]
        raise UserError(f"{url} answered HTTP {err.code}: {detail}")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise UserError(f"cannot reach {url} ({getattr(err, 'reason', err)}); is TF Serving running there?")


def predict_local(saved_model_dir: str | Path, images: np.ndarray) -> dict[str, np.ndarray]:
    loaded = tf.saved_model.load(str(saved_model_dir))
    outputs = loaded.signatures["serving_uint8"](images=tf.constant(images, tf.uint8))
    return {key: value.numpy() for key, value in outputs.items()}


def top_k(probabilities: np.ndarray, k: int, class_names: list[str] | None = None) -> list[list[tuple]]:
    """Per image, the k most likely (class id, name, probability)."""
    ranked = np.argsort(-probabilities, axis=-1)[:, :k]
    return [[(int(c), class_names[c] if class_names and c < len(class_names) else str(c), float(p[c]))
             for c in row] for row, p in zip(ranked, probabilities)]
