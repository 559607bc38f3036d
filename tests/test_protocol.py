"""The authors' protocol where we used to drift (issue 12): learning-rate drops
and warm-up counted from epoch 1, label-noise conventions, the TRADES + SGLR
attack start, the reference PGD protocol, and final attack points disjoint from
the points that picked the best epoch for every run seed."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from sglr_keras.attacks.pgd import PGD, ReferencePGD
from sglr_keras.attacks.training import TradesKL, TrainingPGD
from sglr_keras.config import load_config
from sglr_keras.data import load_dataset, symmetric_label_noise
from sglr_keras.evaluation import ModelRunner
from sglr_keras.training.recipe import build_attack, evaluated_epochs, make_optimizer
from tests.conftest import run_cli


@pytest.mark.parametrize("milestones, epochs, first_new_epochs", [
    ([100, 150], 200, [100, 150]),   # the reference: lr 0.01 from epoch 100 (counted from 1)
    ([0.5, 0.75], 200, [100, 150]),
    ([0.5, 0.75], 60, [30, 45]),
])
def test_the_first_step_of_each_milestone_epoch_has_the_new_lr(milestones, epochs, first_new_epochs):
    steps = 7
    config = load_config(None, {"epochs": epochs, "optimizer.lr": 0.1, "optimizer.lr_milestones": milestones})
    optimizer = make_optimizer(config, steps)
    optimizer.build([keras.Variable(0.0)])

    def lr_at(iterations):  # the rate the step taken at this iteration count uses
        optimizer.iterations.assign(iterations)
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    for drop, epoch in enumerate(first_new_epochs, start=1):
        first_step = (epoch - 1) * steps
        assert lr_at(first_step - 1) == pytest.approx(0.1 * 0.1 ** (drop - 1))
        assert lr_at(first_step) == pytest.approx(0.1 * 0.1 ** drop)


def test_the_history_records_the_lr_each_epoch_trained_with(tmp_path, tiny_config_file):
    # Milestones 0.5 and 0.75 of 4 epochs: lr 0.05 for epoch 1, 0.005 for epoch 2,
    # 0.0005 for epochs 3 and 4 (read at an epoch's end, the schedule is one ahead).
    config = tiny_config_file(**{"epochs": 4, "optimizer.lr_milestones": [0.5, 0.75], "evaluation.every": 4})
    result = run_cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [record["lr"] for record in history] == pytest.approx([0.05, 0.005, 0.0005, 0.0005])


def test_redraw_noise_draws_from_all_classes_and_flip_always_changes():
    labels = np.arange(10_000) % 10
    flipped = symmetric_label_noise(labels, 0.4, 10, seed=0, mode="flip")
    redrawn = symmetric_label_noise(labels, 0.4, 10, seed=0, mode="redraw")
    assert np.mean(flipped != labels) == pytest.approx(0.4)
    # int(rate * N) labels redrawn uniformly from 10 classes: about 1/10 stay correct.
    assert np.mean(redrawn != labels) == pytest.approx(0.4 * 0.9, abs=0.01)
    assert np.mean(redrawn != labels) < 0.4


def test_run_json_reports_the_actual_fraction_of_wrong_labels(tmp_path, tiny_config_file):
    config = tiny_config_file(**{"epochs": 1, "data.label_noise": 0.5, "data.label_noise_mode": "redraw"})
    result = run_cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    facts = json.loads((tmp_path / "run" / "run.json").read_text())
    bundle = load_dataset("synthetic")
    noisy = load_dataset("synthetic", label_noise=0.5, seed=0, label_noise_mode="redraw")
    assert facts["label_noise"]["mode"] == "redraw"
    assert facts["label_noise"]["wrong_label_fraction"] == pytest.approx(np.mean(noisy.y_train != bundle.y_train))
    assert 0.3 < facts["label_noise"]["wrong_label_fraction"] < 0.5


def test_trades_sglr_starts_its_attack_from_a_uniform_point_of_the_ball():
    assert build_attack(load_config(None, {"method": "trades"})).start == "normal"
    attack = build_attack(load_config(None, {"method": "trades-sglr"}))
    assert isinstance(attack, TradesKL) and attack.start == "uniform"
    assert isinstance(build_attack(load_config(None, {"method": "sglr"})), TrainingPGD)
    # With no ascent steps the start is the returned point: inside the ball, far from x.
    x = tf.fill((4, 8, 8, 1), 0.5)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    start = TradesKL(0.1, 0.01, 1, start="uniform").perturb(model, x, seeds=tf.constant([[1, i] for i in range(4)],
                                                                                          tf.int64))
    delta = np.abs(np.asarray(start) - 0.5)
    assert delta.max() <= 0.1 + 1e-6 and delta.mean() > 0.03


def test_reference_pgd_attacks_every_point_with_step_eps_3_31():
    # A model that is always wrong on clean inputs and right after any change:
    # the reference protocol counts those points, ours does not.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
    model.layers[0].set_weights([np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)])
    x = np.array([[0.6, 0.4], [0.4, 0.6]], np.float32)
    y = np.array([0, 1])
    runner = ModelRunner(model, 2)
    correct = runner.correct(x, y)
    ours = runner.attack(PGD(0.05, 0.0125, 5), x, y, correct)
    theirs = runner.attack(ReferencePGD(0.05, 0.05 * 3 / 31, 5), x, y, correct)
    assert theirs.robust_accuracy >= ours.robust_accuracy
    from sglr_keras.attacks import build_attack as build_eval_attack

    built = build_eval_attack("pgd-reference", 0.031)
    assert built.step_size == pytest.approx(0.003) and built.steps == 20 and built.attacks_all_points


def test_evaluation_every_keeps_the_last_epoch_and_the_first_at_each_lr():
    config = load_config(None, {"epochs": 60, "evaluation.every": 4, "optimizer.lr_milestones": [0.5, 0.75]})
    epochs = evaluated_epochs(config)
    assert {30, 45, 60} <= epochs and 4 in epochs and 5 not in epochs


def test_final_points_avoid_the_selection_points_whatever_the_run_seed(tmp_path):
    # Run seed 3 picks its best epoch on test points drawn with seed 3; the final
    # attacks draw with seed 0 and must still avoid every one of them.
    experiment = {
        "name": "seeds", "base": {
            "epochs": 1, "batch_size": 64, "seed": 3, "data": {"dataset": "synthetic"},
            "model": {"arch": "small_cnn", "width": 0.5},
            "attack": {"eps": "8/255", "step_size": "2/255", "steps": 1}, "optimizer": {"lr": 0.05},
            "evaluation": {"n_test": 100, "n_train": 16, "pgd_steps": 1, "batch_size": 64}},
        "runs": {"pgd-at": {"method": "pgd-at"}},
        "final_evaluation": {"n_examples": 96, "attacks": ["pgd"], "batch_size": 96, "seed": 0,
                             "checkpoints": ["last"]},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    result = run_cli("reproduce", path, "--runs-dir", tmp_path / "runs", "--report-dir", tmp_path / "report")
    assert result.exit_code == 0, result.output
    selection = json.loads((tmp_path / "runs" / "pgd-at" / "selection_points.json").read_text())
    assert selection["seed"] == 3 and len(selection["test_indices"]) == 100
    bundle = load_dataset("synthetic")
    final = bundle.test_indices(96, 0, exclude=selection["test_indices"])
    assert len(final) == 96 and not set(final.tolist()) & set(selection["test_indices"])
    # Drawn naively with seed 0, some final points would have been selection points.
    assert set(bundle.test_indices(96, 0).tolist()) & set(selection["test_indices"])
    record = json.loads((tmp_path / "runs" / "pgd-at" / "last.keras.final.json").read_text())
    import hashlib

    assert record["test_indices_digest"] == hashlib.sha256(json.dumps(final.tolist()).encode()).hexdigest()[:16]
