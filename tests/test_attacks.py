import numpy as np
import tensorflow as tf

from sglr_keras.attacks import build_attack
from sglr_keras.attacks.apgd import APGD
from sglr_keras.attacks.fab import FAB
from sglr_keras.attacks.fgsm import FGSM
from sglr_keras.attacks.losses import cross_entropy, cw_margin
from sglr_keras.attacks.pgd import CW, PGD
from sglr_keras.attacks.square import Square
from sglr_keras.evaluation import AttackBudgetError, check_budget
from sglr_keras.models import build_model
from tests.conftest import linear_model

import pytest


def _fixed_cnn_and_data():
    model = build_model("small_cnn", (8, 8, 1), 10, width=0.5)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 8, 8, 1)).astype(np.float32)
    x[:4] = np.where(x[:4] > 0.5, 1.0, 0.0)  # points on the box edges
    y = rng.integers(0, 10, size=32).astype(np.int32)
    return model, x, y


@pytest.mark.parametrize("attack", [PGD(eps=0.05, step_size=0.02, steps=5), CW(eps=0.05, step_size=0.02, steps=5),
                                    FGSM(eps=0.05), PGD(eps=0.05, step_size=0.02, steps=5, restarts=2)])
def test_attacks_stay_in_the_eps_ball_and_pixel_range(attack):
    model, x, y = _fixed_cnn_and_data()
    x_adv = attack.perturb(model, tf.constant(x), tf.constant(y)).numpy()
    assert np.abs(x_adv - x).max() <= 0.05 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_l2_pgd_stays_in_the_l2_ball():
    model, x, y = _fixed_cnn_and_data()
    x_adv = PGD(eps=0.5, step_size=0.2, steps=5, norm="L2").perturb(model, tf.constant(x), tf.constant(y)).numpy()
    assert np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1).max() <= 0.5 + 1e-5


def test_pgd_raises_the_loss_on_a_fixed_model():
    rng = np.random.default_rng(1)
    model = linear_model(rng.normal(size=(64, 10)), np.zeros(10), (8, 8, 1))
    _, x, y = _fixed_cnn_and_data()
    x_adv = PGD(eps=0.05, step_size=0.02, steps=10).perturb(model, tf.constant(x), tf.constant(y))
    clean_loss = cross_entropy(model(x), y).numpy()
    adv_loss = cross_entropy(model(x_adv), y).numpy()
    assert (adv_loss >= clean_loss - 1e-5).all()
    assert adv_loss.mean() > clean_loss.mean() + 0.5


def test_pgd_flips_a_linear_model_exactly_when_the_margin_allows():
    # Two classes, z = w.x with w_1 - w_0 = (1, 1, ..., 1) / 16: the minimal L-inf
    # perturbation to flip a point with margin m is m / ||w_1 - w_0||_1 = m.
    weights = np.zeros((16, 2))
    weights[:, 0] = 1.0 / 16
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    bias = np.array([0.0, 0.45])  # margin z_0 - z_1 = 0.5 - 0.45 = 0.05
    model = linear_model(weights, bias, (4, 4, 1))
    y = np.zeros(2, np.int32)
    for eps, flipped in ((0.04, False), (0.06, True)):
        x_adv = PGD(eps=eps, step_size=eps / 4, steps=20, random_start=False).perturb(model, x, y)
        assert bool((np.argmax(model(x_adv), -1) != y).all()) == flipped


def test_cw_margin_is_positive_exactly_when_misclassified():
    logits = tf.constant([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    margin = cw_margin(logits, tf.constant([0, 0])).numpy()
    np.testing.assert_allclose(margin, [-2.0, 2.0])


def test_budget_check_refuses_out_of_ball_points():
    x = np.zeros((1, 2, 2, 1), np.float32)
    with pytest.raises(AttackBudgetError):
        check_budget(x, x + 0.1, eps=0.05)
    with pytest.raises(AttackBudgetError):
        check_budget(x, x - 0.01, eps=0.05)
    check_budget(x, x + 0.05, eps=0.05)


@pytest.mark.parametrize("make, words", [
    (lambda: APGD(0.03, loss="cw"), "loss must be"),
    (lambda: PGD(float("nan"), 0.01, 10), "eps"),
    (lambda: PGD(0.03, 0.01, -5), "steps"),
    (lambda: PGD(0.03, float("nan"), 10), "step_size"),
    (lambda: Square(0.03, n_queries=0), "n_queries"),
    (lambda: FAB(0.03, n_target_classes=0), "n_target"),
    (lambda: build_attack("deepfool", 0.03), "unknown"),
    (lambda: build_attack("square", 0.5, "L2"), "L-inf"),
])
def test_attack_constructors_refuse_settings_they_would_misread(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_per_example_starts_are_vectorised_and_independent_of_the_batch(caplog):
    import logging

    import tensorflow as tf

    from sglr_keras.attacks.training import example_noise

    x = tf.zeros([64, 8, 8, 3])
    seeds = tf.stack([tf.fill([64], tf.constant(1_000_003 * 7 + 3, tf.int64)), tf.range(64, dtype=tf.int64)], 1)
    with caplog.at_level(logging.WARNING):
        uniform = tf.function(lambda s: example_noise(x, s, "uniform"))(seeds).numpy()
        normal = tf.function(lambda s: example_noise(x, s, "normal"))(seeds).numpy()
    assert "while_loop" not in caplog.text
    # Example 9 draws the same start alone, or at another place in another batch.
    alone = example_noise(x[:1], seeds[9:10], "uniform").numpy()
    moved = example_noise(x[:2], tf.reverse(seeds[8:10], [0]), "uniform").numpy()
    np.testing.assert_array_equal(uniform[9], alone[0])
    np.testing.assert_array_equal(uniform[9], moved[0])
    # The distributions: U(-1, 1) (mean 0, sd 1/sqrt(3)) and N(0, 1), on 12,288 draws each.
    assert abs(uniform.mean()) < 0.02 and abs(uniform.std() - 1 / np.sqrt(3)) < 0.01
    assert uniform.min() >= -1 and uniform.max() < 1
    assert abs(normal.mean()) < 0.03 and abs(normal.std() - 1) < 0.02
    # Another step (first seed) gives other numbers; examples are uncorrelated.
    other = example_noise(x, seeds + tf.constant([[1, 0]], tf.int64), "uniform").numpy()
    assert abs(np.corrcoef(uniform.ravel(), other.ravel())[0, 1]) < 0.03
    assert abs(np.corrcoef(uniform[0].ravel(), uniform[1].ravel())[0, 1]) < 0.1


# --- the attack base: one cache, one robust-subset loop, one random start -------------

def _bn_dropout_model():
    import keras

    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(keras.layers.Flatten()(h))
    return keras.Model(inputs, keras.layers.Dense(10)(h))


EVERY_ATTACK = [
    lambda: PGD(eps=0.05, step_size=0.02, steps=3), lambda: CW(eps=0.05, step_size=0.02, steps=3),
    lambda: FGSM(eps=0.05), lambda: APGD(eps=0.05, n_iter=3), lambda: APGD(eps=0.05, targeted=True, n_iter=3),
    lambda: FAB(eps=0.05, n_iter=3), lambda: FAB(eps=0.05, n_iter=3, targeted=False),
    lambda: Square(eps=0.05, n_queries=5), lambda: build_attack("autoattack", 0.05),
]


@pytest.mark.parametrize("make", EVERY_ATTACK)
def test_no_attack_changes_the_model_or_prints(make, capsys):
    model = _bn_dropout_model()
    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(6, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 6)
    before = [w.numpy().copy() for w in model.weights]
    trainable = [layer.trainable for layer in model.layers]
    make()(model, x, y)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))  # BN statistics included
    assert [layer.trainable for layer in model.layers] == trainable
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("make", [lambda: APGD(eps=0.05, n_iter=3), lambda: FAB(eps=0.05, n_iter=3),
                                  lambda: Square(eps=0.05, n_queries=5)])
def test_compiled_functions_are_per_model_and_do_not_keep_a_model_alive(make):
    import gc
    import weakref

    attack = make()
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(4, 8, 8, 1)).astype(np.float32)
    models = [build_model("small_cnn", (8, 8, 1), 10, width=0.5) for _ in range(3)]
    for model in models:  # labels the model gets right: every point is attacked
        attack(model, x, np.argmax(model(x, training=False), -1))
    assert len(attack._compiled_cache) == 3
    gone = weakref.ref(models[0])
    del models[0], model
    gc.collect()
    assert gone() is None and len(attack._compiled_cache) == 2


def test_break_remaining_attacks_only_the_points_still_robust():
    from sglr_keras.attacks.base import break_remaining

    x = np.zeros((5, 1, 1, 1), np.float32)
    robust = np.array([True, True, False, True, True])
    seen = []

    def attack_run(todo, run):
        seen.append(list(todo))
        broken = np.isin(todo, [0, 3]) if run == 0 else np.ones(len(todo), bool)
        return np.full((len(todo), 1, 1, 1), run + 1.0, np.float32), broken

    x_out = break_remaining(x, robust, range(3), attack_run)
    assert seen == [[0, 1, 3, 4], [1, 4]]  # no third run: nothing left
    assert x_out.ravel().tolist() == [1.0, 2.0, 0.0, 1.0, 2.0] and not robust.any()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_random_starts_lie_in_the_ball_or_on_its_surface(norm):
    from sglr_keras.attacks.base import random_start

    x = tf.fill((64, 6, 6, 3), 0.5)
    size = (lambda d: tf.reduce_max(tf.abs(d), axis=[1, 2, 3])) if norm == "Linf" else (
        lambda d: tf.norm(tf.reshape(d, [64, -1]), axis=1))
    inside = size(random_start(x, 0.2, norm, tf.random.Generator.from_seed(0)) - x).numpy()
    surface = size(random_start(x, 0.2, norm, tf.random.Generator.from_seed(0), surface=True) - x).numpy()
    assert inside.max() <= 0.2 + 1e-6 and inside.min() < 0.2 * 0.999
    assert np.allclose(surface, 0.2, atol=1e-5)
