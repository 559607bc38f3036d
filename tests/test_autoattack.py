"""Attacks on models where the truth is known.

For a linear classifier z = W^T x + b on inputs away from the box edges, the
smallest L-inf perturbation that moves x from class y to class j is
(z_y - z_j) / ||w_y - w_j||_1, so the exact robust accuracy at eps is known.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sglr_keras.attacks.apgd import APGD, checkpoint_iterations
from sglr_keras.attacks.autoattack import AutoAttack
from sglr_keras.attacks.fab import FAB
from sglr_keras.attacks.pgd import PGD
from sglr_keras.attacks.square import Square
from sglr_keras.evaluation import ModelRunner, evaluate
from tests.conftest import linear_model, run_cli

EPS = 0.05


def _linear_problem(num_classes, n=200, seed=0):
    rng = np.random.default_rng(seed)
    shape = (4, 4, 1)
    weights = rng.normal(size=(16, num_classes))
    bias = rng.normal(size=num_classes) * 0.1
    # Inputs at least 0.25 from the box edges, so the box never binds at EPS.
    x = rng.uniform(0.25, 0.75, size=(n, *shape)).astype(np.float32)
    logits = x.reshape(n, -1) @ weights + bias
    y = logits.argmax(axis=1)
    distance = np.full(n, np.inf)
    for j in range(num_classes):
        l1 = np.abs(weights[:, y].T - weights[:, j]).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            distance = np.where(y != j, np.minimum(distance, (logits[np.arange(n), y] - logits[:, j]) / l1), distance)
    truth = float((distance > EPS).mean())
    return linear_model(weights, bias, shape), x, y.astype(np.int32), truth


def _accuracy(model, x_adv, y):
    return float((np.argmax(model(x_adv).numpy(), axis=1) == y).mean())


@pytest.mark.parametrize("attack", [
    APGD(EPS, targeted=True, n_target_classes=4),
    FAB(EPS, targeted=True, n_target_classes=4),
], ids=lambda a: a.name)
def test_targeted_attacks_find_the_exact_robust_accuracy_of_a_linear_model(attack):
    model, x, y, truth = _linear_problem(num_classes=5)
    assert 0.3 < truth < 0.95  # the problem is not trivial
    accuracy = _accuracy(model, np.asarray(attack.perturb(model, x, y)), y)
    assert truth <= accuracy <= truth + 0.005


def test_apgd_ce_is_exact_on_a_binary_linear_model():
    # With two classes the CE gradient points at the only boundary. With more,
    # CE heads for the smallest logit margin, not the nearest boundary in
    # L-inf, which is why AutoAttack adds targeted DLR.
    model, x, y, truth = _linear_problem(num_classes=2, seed=3)
    accuracy = _accuracy(model, np.asarray(APGD(EPS, loss="ce").perturb(model, x, y)), y)
    assert truth <= accuracy <= truth + 0.005


def test_standard_suite_is_exact_on_a_linear_model():
    model, x, y, truth = _linear_problem(num_classes=5, n=120, seed=1)
    runner = ModelRunner(model)
    stages = AutoAttack(EPS, version="standard").run(runner, x, y, runner.correct(x, y))
    assert [s.name for s in stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    accuracies = [s.robust_accuracy for s in stages]
    assert accuracies == sorted(accuracies, reverse=True)  # each stage only removes points
    assert truth <= accuracies[-1] <= truth + 0.005


def test_plus_suite_is_exact_on_a_linear_model():
    model, x, y, truth = _linear_problem(num_classes=5, n=80, seed=2)
    runner = ModelRunner(model)
    stages = AutoAttack(EPS, version="plus").run(runner, x, y, runner.correct(x, y))
    assert [s.name for s in stages] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert truth <= stages[-1].robust_accuracy <= truth + 0.005


def test_rand_suite_attacks_a_randomised_model_through_the_noise():
    # Input noise at inference makes the model random. For a binary linear model
    # every draw's input gradient points the same way, so expectation over
    # transformation heads for the worst case of the noise-free model. APGD keeps
    # the first point a noisy draw misclassifies, which may stop a little short of
    # the noise-free boundary: a few points more than the truth may survive, never fewer.
    model, x, y, truth = _linear_problem(num_classes=2, n=120, seed=3)
    inputs = keras.Input(x.shape[1:])
    noisy = keras.layers.Lambda(lambda t: t + 0.01 * tf.random.normal(tf.shape(t)))(inputs)
    randomised = keras.Model(inputs, model(noisy))
    suite = AutoAttack(EPS, version="rand")
    assert [a.name for a in suite.attacks] == ["apgd-ce", "apgd-dlr"] and suite.attacks[0].eot_iter == 20
    x_adv = np.asarray(suite.attacks[0].perturb(randomised, x, y))
    assert np.abs(x_adv - x).max() <= EPS + 1e-6
    assert truth <= _accuracy(model, x_adv, y) <= truth + 0.05 < 1.0


def _masked_cnn():
    """A small CNN whose input gradient is zero everywhere (stop_gradient on the
    input): gradient attacks are blind, a query attack is not."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    blocked = keras.layers.Lambda(lambda t: tf.stop_gradient(t))(inputs)
    hidden = keras.layers.Conv2D(8, 3, activation="relu")(blocked)
    outputs = keras.layers.Dense(5)(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).uniform(0.2, 0.8, size=(48, 8, 8, 1)).astype(np.float32)
    y = np.argmax(model(x).numpy(), axis=1).astype(np.int32)  # clean accuracy 100%
    return model, x, y


def test_square_lowers_accuracy_without_gradients():
    model, x, y = _masked_cnn()
    x_pgd = PGD(eps=0.1, step_size=0.025, steps=20, random_start=False).perturb(model, x, y)
    assert _accuracy(model, x_pgd, y) == 1.0  # blind
    x_square = np.asarray(Square(eps=0.1, n_queries=300).perturb(model, x, y))
    assert np.abs(x_square - x).max() <= 0.1 + 1e-6
    assert _accuracy(model, x_square, y) < 0.7


def test_diagnostics_flag_a_masked_model():
    model, x, y = _masked_cnn()
    report = evaluate(model, x, y, ["pgd", "autoattack"], eps=0.1, diagnose=True)
    flagged = set(report.flagged)
    assert {"pgd_vs_autoattack_spread", "black_box_finds_more", "accuracy_at_large_eps"} <= flagged


@pytest.fixture(scope="module")
def trained_digits_model():
    from sglr_keras.data import load_dataset
    from sglr_keras.models import build_model

    keras.utils.set_random_seed(0)
    bundle = load_dataset("digits")
    model = build_model("small_cnn", bundle.input_shape, 10, width=0.5)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(bundle.x_train / 255.0, bundle.y_train, epochs=8, batch_size=64, verbose=0)
    x, y = bundle.test_subset(200)
    return model, x, y


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(trained_digits_model):
    model, x, y = trained_digits_model
    eps = 0.1
    runner = ModelRunner(model)
    correct = runner.correct(x, y)
    assert correct.mean() > 0.8
    pgd = runner.attack(PGD(eps, eps / 4, steps=20), x, y, correct).robust_accuracy
    apgd = runner.attack(APGD(eps, loss="ce", n_iter=20), x, y, correct).robust_accuracy
    assert apgd <= pgd


@pytest.mark.parametrize("attack", [APGD(0.05, loss="dlr", n_iter=10), APGD(0.05, targeted=True, n_iter=10),
                                    FAB(0.05, n_iter=10), FAB(0.05, targeted=False, n_iter=10),
                                    Square(0.05, n_queries=50), APGD(0.5, norm="L2", n_iter=10)],
                         ids=lambda a: f"{a.name}-{a.norm}")
def test_attacks_respect_the_ball_and_the_pixel_range(trained_digits_model, attack):
    model, x, y = trained_digits_model
    x_adv = np.asarray(attack.perturb(model, x[:64], y[:64]))
    delta = (x_adv - x[:64]).reshape(64, -1)
    size = np.abs(delta).max(axis=1) if attack.norm == "Linf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= attack.eps + 1e-5
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_apgd_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, Sec. 3.2).
    assert checkpoint_iterations(100)[:5] == [22, 41, 57, 70, 80]


def test_cli_autoattack_on_a_plain_keras_model(tmp_path):
    model, _, _, _ = _linear_problem(num_classes=5)
    inputs = keras.Input((16, 16, 3))
    flat = keras.layers.Flatten()(inputs)
    path = tmp_path / "plain.keras"
    keras.Model(inputs, keras.layers.Dense(10)(flat)).save(path)
    out = tmp_path / "aa.json"
    result = run_cli("eval", "--checkpoint", path, "--dataset", "synthetic", "--attack", "autoattack",
                     "--n-examples", 24, "--json", out)
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(out.read_text())
    stages = report["autoattack"]["stages"]
    assert [s["attack"] for s in stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert report["robust_accuracy"]["autoattack"] == stages[-1]["robust_accuracy_after"]
    assert {c["check"] for c in report["diagnostics"]} >= {"accuracy_at_large_eps"}


def _exact_distances(model, x, y):
    weights = model.layers[-1].get_weights()[0]
    logits = model(x).numpy()
    other = 1 - y
    l1 = np.abs(weights[:, y] - weights[:, other]).sum(axis=0)
    return (logits[np.arange(len(y)), y] - logits[np.arange(len(y)), other]) / l1


def test_fab_finds_the_minimum_norm_of_a_binary_linear_model():
    # FAB is a minimum-norm attack: with the paper's backward step (the adversarial
    # point itself is pulled towards x, then linearised there) it converges to the
    # exact distance to the boundary, not to a point up to eta further out.
    rng = np.random.default_rng(1)
    weights, bias = 8 * rng.normal(size=(16, 2)), rng.normal(size=2)
    model = linear_model(weights, bias, (4, 4, 1))
    x = rng.uniform(0.25, 0.75, size=(200, 4, 4, 1)).astype(np.float32)
    y = np.argmax(model(x).numpy(), axis=1).astype(np.int32)
    distance = _exact_distances(model, x, y)
    reachable = distance < 0.2
    assert reachable.sum() > 50
    x_adv = np.asarray(FAB(0.24, targeted=False, n_iter=100).perturb(model, x, y))
    norms = np.abs((x_adv - x).reshape(len(x), -1)).max(axis=1)
    fooled = np.argmax(model(x_adv).numpy(), axis=1) != y
    assert fooled[reachable].all()
    np.testing.assert_array_less(distance[reachable] * (1 - 1e-4), norms[reachable])
    # Measured: within 0.54% of the exact distance; the previous order (shrinking the
    # next proposal instead of the adversarial point) stopped 0.91% out on every point.
    np.testing.assert_array_less(norms[reachable], distance[reachable] * 1.007)


def test_the_determinism_check_flags_a_randomised_model_only():
    from sglr_keras.diagnostics import determinism_check

    model, x, y, _ = _linear_problem(num_classes=2, n=32, seed=3)
    inputs = keras.Input(x.shape[1:])
    noisy = keras.layers.Lambda(lambda t: t + 0.01 * tf.random.normal(tf.shape(t)))(inputs)
    randomised = keras.Model(inputs, model(noisy))
    assert determinism_check(ModelRunner(randomised), x)["flagged"]
    assert not determinism_check(ModelRunner(model), x)["flagged"]
