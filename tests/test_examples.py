"""The scripts in examples/ run as a user would start them, on tiny data."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(*args, check=True):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_own_model_with_sglr_then_evaluate():
    out = _run("examples/own_model_sglr.py", "--tiny").stdout
    assert "| clean |" in out and "| pgd |" in out and "| apgd-ce |" in out


def test_tf_data_under_mirrored_strategy_resumes_with_backup_and_restore(tmp_path):
    stopped = _run("examples/tf_data_mirrored.py", "--backup-dir", tmp_path / "backup", "--tiny", "--stop-after", 2,
                   check=False)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    assert (tmp_path / "backup" / "latest.weights.h5").is_file()
    resumed = _run("examples/tf_data_mirrored.py", "--backup-dir", tmp_path / "backup", "--tiny").stdout
    history = eval(resumed.strip().splitlines()[-1])  # the script prints its history dict
    assert len(history["loss"]) == 1  # epochs 1-2 were restored, only epoch 3 ran
    assert "val_robust_acc" in history


def test_evaluate_any_keras_file_and_export_it(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.set_weights([np.random.default_rng(0).normal(0, 0.1, w.shape).astype("float32") for w in model.weights])
    model.save(tmp_path / "model.keras")
    out = _run("examples/evaluate_and_export.py", tmp_path / "model.keras", "--dataset", "digits", "--eps", 0.05,
               "--points", 32, "--export-dir", tmp_path / "exported", "--tiny").stdout
    assert "| pgd |" in out and "served logits agree: True" in out
    saved = tmp_path / "exported" / "classifier" / "1"
    assert (saved / "saved_model.pb").is_file()
    again = _run("examples/evaluate_and_export.py", saved, "--dataset", "digits", "--eps", 0.05, "--points", 32,
                 "--tiny").stdout
    assert "| pgd |" in again
