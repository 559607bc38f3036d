import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from sglr_keras import sglr
from sglr_keras.config import load_config
from sglr_keras.models import build_model
from sglr_keras.training.objectives import smoothed_labels, trades_loss
from sglr_keras.training.recipe import build_trainer, make_optimizer


def _softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_sglr_target_matches_a_hand_computation():
    lam, alpha, r, temperature = 0.3, 0.9, 0.2, 2.0
    z_clean, z_adv = [2.0, 0.0, -1.0], [0.0, 1.0, 0.5]
    p_clean = _softmax([v / temperature for v in z_clean])
    p_adv = _softmax([v / temperature for v in z_adv])
    row = [0.7, 0.2, 0.1]  # a row refined in earlier epochs; the label is class 0
    mixed = [lam * c + (1 - lam) * a for c, a in zip(p_clean, p_adv)]
    new_row = [alpha * e + (1 - alpha) * f for e, f in zip(row, mixed)]
    expected = [r * e + (1 - r) * h for e, h in zip(new_row, [1.0, 0.0, 0.0])]

    prediction = sglr.interpolated_prediction(tf.constant([z_clean]), tf.constant([z_adv]), lam, temperature)
    rows = sglr.ema_rows(tf.constant([row]), prediction, alpha)
    target = sglr.soft_target(rows, tf.constant([0]), 3, r)
    np.testing.assert_allclose(rows.numpy()[0], new_row, atol=1e-6)
    np.testing.assert_allclose(target.numpy()[0], expected, atol=1e-6)


def test_soft_cross_entropy_with_one_hot_is_cross_entropy():
    logits = tf.constant([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    labels = tf.constant([1, 0])
    expected = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    np.testing.assert_allclose(sglr.soft_cross_entropy(logits, tf.one_hot(labels, 3)), expected, rtol=1e-6)


def test_trades_loss_matches_a_hand_computation():
    z_clean, z_adv, beta = [2.0, 0.0], [0.0, 1.0], 6.0
    p, q = _softmax(z_clean), _softmax(z_adv)
    expected = -math.log(p[0]) + beta * sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    loss = trades_loss(tf.constant([z_clean]), tf.constant([z_adv]), tf.one_hot([0], 2), beta)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_target():
    np.testing.assert_allclose(smoothed_labels(tf.constant([1]), 4, 0.2).numpy(), [[0.05, 0.85, 0.05, 0.05]])


def test_row_entropy():
    assert sglr.row_entropy(np.eye(3)) == pytest.approx(0.0, abs=1e-9)
    assert sglr.row_entropy(np.full((2, 4), 0.25)) == pytest.approx(math.log(4))


# --- the table inside the trainer ------------------------------------------------------

N, C = 40, 5


def _trainer(method="sglr", warmup=0, table_dtype="float32"):
    config = load_config(None, {
        "method": method, "epochs": 5, "sglr.warmup_epochs": warmup, "sglr.r": 0.5,
        "sglr.table_dtype": table_dtype, "attack.steps": 2, "optimizer.lr": 0.01,
        "data.dataset": "synthetic",
    })
    labels = np.arange(N) % C
    classifier = build_model("small_cnn", (8, 8, 1), C, width=0.25)
    trainer = build_trainer(classifier, config, labels, C)
    trainer.compile(optimizer=make_optimizer(config, steps=1))
    return trainer, labels


def _fit_batch(trainer, labels, indices, epoch=0):
    """One step in (0-based) ``epoch``, through a plain ``fit``."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(len(indices), 8, 8, 1)).astype(np.float32)
    batch = (x, labels[indices].astype(np.int32), np.asarray(indices, np.int32))
    trainer.fit(tf.data.Dataset.from_tensors(batch), initial_epoch=epoch, epochs=epoch + 1, verbose=0,
                shuffle=False)


def test_table_starts_one_hot_and_only_batch_rows_change():
    trainer, labels = _trainer()
    table = trainer.soft_label_table
    np.testing.assert_array_equal(table.numpy_rows(), np.eye(C)[labels])
    batch = [3, 7, 11, 20]
    _fit_batch(trainer, labels, batch)
    rows = table.numpy_rows()
    others = np.setdiff1d(np.arange(N), batch)
    np.testing.assert_array_equal(rows[others], np.eye(C)[labels[others]])
    assert not np.allclose(rows[batch], np.eye(C)[labels[batch]])
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-5)  # on the simplex
    assert rows.min() >= 0.0
    # EMA with alpha 0.9 from a one-hot row: the label keeps at least 0.9.
    assert (rows[batch, labels[batch]] >= 0.9 - 1e-6).all()


def test_warmup_uses_hard_labels_and_leaves_the_table_alone():
    trainer, labels = _trainer(warmup=1)
    _fit_batch(trainer, labels, [0, 1, 2, 3], epoch=0)
    np.testing.assert_array_equal(trainer.soft_label_table.numpy_rows(), np.eye(C)[labels])
    _fit_batch(trainer, labels, [0, 1, 2, 3], epoch=1)
    assert not np.allclose(trainer.soft_label_table.numpy_rows()[:4], np.eye(C)[labels[:4]])


class _TableAfterEachEpoch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append(self.model.soft_label_table.numpy_rows().copy())


@pytest.mark.parametrize("method", ["sglr", "trades-sglr"])
def test_a_plain_fit_refines_from_the_first_epoch_after_the_warmup(method):
    # warmup_epochs 2: epochs 1 and 2 (1-based) train on hard labels, epoch 3 is the
    # first refined one, as the reference code's es=3 with epochs counted from 1.
    trainer, labels = _trainer(method, warmup=2)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 8, 8, 1)).astype(np.float32)
    batch = (x, labels[:8].astype(np.int32), np.arange(8, dtype=np.int32))
    recorder = _TableAfterEachEpoch()
    trainer.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=4, steps_per_epoch=1, verbose=0,
                callbacks=[recorder])
    one_hot = np.eye(C)[labels]
    np.testing.assert_array_equal(recorder.rows[0], one_hot)
    np.testing.assert_array_equal(recorder.rows[1], one_hot)
    assert not np.allclose(recorder.rows[2][:8], one_hot[:8])
    assert not np.allclose(recorder.rows[3][:8], recorder.rows[2][:8])


def test_reference_code_preset_refines_from_epoch_90_of_200():
    config = load_config(None, {"method": "sglr", "epochs": 200, "sglr.preset": "reference-code"})
    objective = build_trainer(build_model("small_cnn", (8, 8, 1), C, width=0.25), config, np.arange(N) % C,
                              C).objective
    refined = [epoch + 1 for epoch in range(200) if (objective.set_epoch(epoch) or True) and objective.refining]
    assert refined[0] == 90 and refined[-1] == 200 and len(refined) == 111


def test_checkpoint_round_trip_restores_the_table_exactly(tmp_path):
    trainer, labels = _trainer(table_dtype="float16")
    _fit_batch(trainer, labels, [5, 6, 7])
    path = tmp_path / "trainer.weights.h5"
    trainer.save_weights(path)
    saved = trainer.soft_label_table.numpy_rows()
    assert trainer.soft_label_table.rows.dtype == "float16"

    restored, _ = _trainer(table_dtype="float16")
    restored.optimizer.build(restored.classifier.trainable_variables)
    restored.load_weights(path)
    np.testing.assert_array_equal(restored.soft_label_table.numpy_rows(), saved)
    for a, b in zip(trainer.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.mark.parametrize("method", ["standard", "pgd-at", "trades", "trades-sglr", "label-smoothing"])
def test_every_method_takes_a_finite_step(method):
    trainer, labels = _trainer(method)
    before = [w.numpy().copy() for w in trainer.classifier.trainable_weights]
    _fit_batch(trainer, labels, [0, 1, 2, 3])
    after = trainer.classifier.trainable_weights
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, after))
    assert all(np.isfinite(a.numpy()).all() for a in after)
    assert (trainer.soft_label_table is not None) == (method == "trades-sglr")
