import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from sglr_keras.export import client
from sglr_keras.export.savedmodel import export_saved_model
from tests.conftest import run_cli, train_once



@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained run, evaluated with PGD, then exported through the CLI."""
    root = train_once(tmp_path_factory, "export", (
        "method: pgd-at\nepochs: 1\nbatch_size: 64\ndata: {dataset: synthetic}\n"
        "model: {arch: small_cnn, width: 0.5}\nattack: {eps: 8/255, step_size: 2/255, steps: 2}\n"
        "optimizer: {lr: 0.05}\nevaluation: {n_test: 32, n_train: 32, pgd_steps: 2, batch_size: 64}\n"), "config.yaml")
    checkpoint = root / "run" / "best.keras"
    result = run_cli("eval", "--checkpoint", checkpoint, "--attack", "pgd", "--n-examples", 64, "--seed", 1,
                  "--json", root / "checkpoint_eval.json")
    assert result.exit_code == 0, result.output
    result = run_cli("export", "--checkpoint", checkpoint, "--out", root / "models", "--name", "tiny")
    assert result.exit_code == 0, result.output
    return checkpoint, root / "models" / "tiny" / "1", root


def test_both_signatures_match_the_keras_model(exported):
    checkpoint, saved, _ = exported
    model = keras.saving.load_model(checkpoint)
    loaded = tf.saved_model.load(str(saved))
    images = np.random.default_rng(0).integers(0, 256, size=(5, 16, 16, 3)).astype(np.uint8)
    pixels = images.astype(np.float32) / 255.0
    logits = model(pixels).numpy()
    for name, batch in (("serving_default", pixels), ("serving_uint8", images)):
        outputs = loaded.signatures[name](images=tf.constant(batch))
        np.testing.assert_allclose(outputs["logits"].numpy(), logits, atol=1e-5)
        np.testing.assert_allclose(outputs["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), atol=1e-5)
        np.testing.assert_array_equal(outputs["class_ids"].numpy(), logits.argmax(axis=1))


def test_saved_model_cli_lists_the_documented_signatures(exported):
    _, saved, _ = exported
    cli = shutil.which("saved_model_cli", path=str(Path(sys.executable).parent))
    shown = subprocess.run([cli, "show", "--dir", str(saved), "--all"], capture_output=True, text=True,
                           check=True).stdout
    default = shown[shown.index("signature_def['serving_default']"):]
    uint8 = shown[shown.index("signature_def['serving_uint8']"):]
    assert "dtype: DT_FLOAT" in default.split("outputs")[0] and "shape: (-1, 16, 16, 3)" in default
    assert "dtype: DT_UINT8" in uint8.split("outputs")[0]
    for output, dtype in (("probabilities", "DT_FLOAT"), ("logits", "DT_FLOAT"), ("class_ids", "DT_INT64")):
        block = default[default.index(f"outputs['{output}']"):][:200]
        assert f"dtype: {dtype}" in block


def test_model_card_carries_data_training_and_measured_robustness(exported):
    _, saved, _ = exported
    card = json.loads((saved / "assets.extra" / "model_card.json").read_text())
    assert card["dataset"] == "synthetic" and card["input_shape"] == [16, 16, 3]
    assert len(card["class_names"]) == 10 and card["method"] == "pgd-at"
    assert card["config"]["attack"]["steps"] == 2
    assert 0.0 <= card["evaluation"]["pgd"]["robust_accuracy"] <= card["evaluation"]["clean_accuracy"]["value"]


def test_eval_on_the_saved_model_matches_the_checkpoint(exported):
    _, saved, root = exported
    result = run_cli("eval", "--checkpoint", saved, "--attack", "pgd", "--n-examples", 64, "--seed", 1,
                  "--json", root / "saved_eval.json")
    assert result.exit_code == 0, result.output
    on_checkpoint = json.loads((root / "checkpoint_eval.json").read_text())
    on_saved = json.loads((root / "saved_eval.json").read_text())
    assert on_saved["dataset"] == "synthetic"  # from the model card
    assert on_saved["clean_accuracy"] == on_checkpoint["clean_accuracy"]
    assert on_saved["robust_accuracy"]["pgd"] == on_checkpoint["robust_accuracy"]["pgd"]


def test_export_refuses_an_existing_version_and_leaves_it_alone(exported):
    checkpoint, saved, root = exported
    before = sorted(p.name for p in saved.rglob("*"))
    result = run_cli("export", "--checkpoint", checkpoint, "--out", root / "models", "--name", "tiny", "--version", 1)
    assert result.exit_code == 2 and "already exists" in result.output
    assert sorted(p.name for p in saved.rglob("*")) == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["1"]


def test_export_refuses_an_unfixed_input_shape(tmp_path):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(inputs)))
    from sglr_keras.errors import UserError

    with pytest.raises(UserError, match="not a fixed"):
        export_saved_model(model, tmp_path, "m")
    assert not any((tmp_path / "m").glob("*")) if (tmp_path / "m").exists() else True
    path = export_saved_model(model, tmp_path, "m", input_shape=(8, 8, 3))
    assert (path / "saved_model.pb").is_file()


def test_rest_request_body_follows_the_documented_format():
    images = np.arange(2 * 2 * 2 * 1, dtype=np.uint8).reshape(2, 2, 2, 1)
    # One named input: "instances" is the list of per-example tensors.
    assert client.rest_request_body(images) == {
        "signature_name": "serving_uint8",
        "instances": [[[[0], [1]], [[2], [3]]], [[[4], [5]], [[6], [7]]]],
    }
    assert client.rest_request_body(images, "serving_default", form="inputs") == {
        "signature_name": "serving_default", "inputs": {"images": images.tolist()}}
    assert client.predict_url("localhost:8501", "sglr") == "http://localhost:8501/v1/models/sglr:predict"
    assert client.predict_url("http://h:1", "m", 3) == "http://h:1/v1/models/m/versions/3:predict"


class _FakeServing(BaseHTTPRequestHandler):
    """Answers :predict the way TF Serving does, from the exported SavedModel."""

    saved_model = None
    requests = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        outputs = self.saved_model.signatures[body["signature_name"]](
            images=tf.constant(np.asarray(body["instances"], np.uint8)))
        rows = [{k: v.numpy()[i].tolist() for k, v in outputs.items()} for i in range(len(body["instances"]))]
        answer = json.dumps({"predictions": rows}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def test_predict_through_a_rest_server_and_locally(exported, tmp_path):
    _, saved, _ = exported
    image = np.random.default_rng(1).integers(0, 256, size=(16, 16, 3)).astype(np.uint8)
    png = tmp_path / "x.png"
    png.write_bytes(tf.io.encode_png(image).numpy())
    _FakeServing.saved_model = tf.saved_model.load(str(saved))
    server = HTTPServer(("127.0.0.1", 0), _FakeServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        card = saved / "assets.extra" / "model_card.json"
        remote = run_cli("predict", "--server", url, "--model", "tiny", "--card", card, png)
        local = run_cli("predict", "--saved-model", saved, png)
    finally:
        server.shutdown()
    assert remote.exit_code == 0, remote.output
    assert local.exit_code == 0, local.output
    path, body = _FakeServing.requests[-1]
    assert path == "/v1/models/tiny:predict"
    assert np.array_equal(np.asarray(body["instances"], np.uint8)[0], image)
    assert remote.output == local.output  # same ranking and probabilities


def test_predict_refuses_a_wrong_image_size(exported, tmp_path):
    _, saved, _ = exported
    png = tmp_path / "big.png"
    png.write_bytes(tf.io.encode_png(np.zeros((20, 20, 3), np.uint8)).numpy())
    result = run_cli("predict", "--saved-model", saved, png)
    assert result.exit_code == 2 and "pass --resize" in result.output
    assert run_cli("predict", "--saved-model", saved, "--resize", png).exit_code == 0
