import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import yaml


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.fixture
def tiny_config_file(tmp_path):
    """A config that trains a small CNN on 16x16 synthetic data in seconds."""

    def make(**overrides):
        raw = {
            "method": "pgd-at", "epochs": 2, "batch_size": 64,
            "data": {"dataset": "synthetic"}, "model": {"arch": "small_cnn", "width": 0.5},
            "attack": {"eps": "8/255", "step_size": "2/255", "steps": 2},
            "optimizer": {"lr": 0.05},
            "evaluation": {"n_test": 64, "n_train": 64, "pgd_steps": 2, "batch_size": 64},
        }
        for key, value in overrides.items():
            node = raw
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return make


def linear_model(weights: np.ndarray, bias: np.ndarray, input_shape) -> keras.Model:
    """A fixed linear classifier on flattened pixels."""
    inputs = keras.Input(input_shape)
    flat = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(weights.shape[1])
    outputs = dense(flat)
    model = keras.Model(inputs, outputs)
    dense.set_weights([weights.astype(np.float32), bias.astype(np.float32)])
    return model


def run_cli(*args):
    """Invoke ``sglr ARGS...`` in-process, as a user would type it (every command registered)."""
    from click.testing import CliRunner

    from sglr_keras.cli.main import with_commands

    return CliRunner().invoke(with_commands(), [str(a) for a in args])


def train_once(tmp_path_factory, prefix: str, config_text: str, config_name: str = "c.yaml"):
    """A folder holding ``config_name`` and the run ``run`` it trained (for module-scoped fixtures)."""
    root = tmp_path_factory.mktemp(prefix)
    config = root / config_name
    config.write_text(config_text)
    result = run_cli("train", "--config", config, "--out", root / "run")
    assert result.exit_code == 0, result.output
    return root
