"""Mixed precision (issue 15): the network computes in float16/bfloat16, logits,
losses and the soft-label table stay float32, float16 steps are loss-scaled and a
step with non-finite gradients is skipped and counted."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sglr_keras.attacks.pgd import PGD
from sglr_keras.config import load_config
from sglr_keras.data import load_dataset
from sglr_keras.evaluation import ModelRunner, check_budget
from sglr_keras.models import build_model
from sglr_keras.training.recipe import build_trainer, make_optimizer


def _data(n=128):
    bundle = load_dataset("synthetic")
    x = bundle.x_train[:n].astype(np.float32) / 255.0
    y = bundle.y_train[:n].astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, y, np.arange(n, dtype=np.int32))).batch(32), bundle


def _trainer(precision, method="sglr", optimizer=None):
    config = load_config(None, {"method": method, "precision": precision, "epochs": 6, "attack.steps": 2,
                                "optimizer.lr": 0.05, "data.dataset": "synthetic"})
    dataset, bundle = _data()
    classifier = build_model("small_cnn", bundle.input_shape, bundle.num_classes, 0.5, precision=precision)
    trainer = build_trainer(classifier, config, bundle.y_train[:128], bundle.num_classes)
    trainer.compile(optimizer=optimizer or make_optimizer(config, steps=4))
    return trainer, dataset


def test_the_policy_applies_to_the_network_but_not_the_logits_or_the_input():
    model = build_model("small_cnn", (16, 16, 3), 10, 0.5, precision="mixed_bfloat16")
    assert model.inputs[0].dtype == "float32"
    assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"
    assert any(layer.dtype_policy.compute_dtype == "bfloat16" for layer in model.layers[1:-1])
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_bfloat16_sglr_trains_and_its_loss_falls():
    trainer, dataset = _trainer("mixed_bfloat16")
    history = trainer.fit(dataset, epochs=6, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    rows = trainer.soft_label_table.numpy_rows()
    assert trainer.soft_label_table.rows.dtype == "float32"
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-5)


def test_float16_skips_overflowing_steps_and_recovers():
    sgd = keras.optimizers.SGD(0.05, momentum=0.9)
    # A scale of 2^40 overflows float16 gradients; each skipped step halves it.
    trainer, dataset = _trainer("mixed_float16", "pgd-at",
                                keras.optimizers.LossScaleOptimizer(sgd, initial_scale=2.0**40))
    before = [w.numpy().copy() for w in trainer.classifier.trainable_weights]
    history = trainer.fit(dataset.repeat(), steps_per_epoch=40, epochs=1, verbose=0).history
    assert 1 <= history["skipped_steps"][-1] < 40
    assert np.isfinite(history["loss"][-1]) and np.isfinite(history["grad_norm"][-1])
    after = trainer.classifier.trainable_weights
    assert all(np.isfinite(a.numpy()).all() for a in after)
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, after))


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_pgd_under_a_mixed_policy_stays_in_the_ball_and_agrees_with_float32(precision):
    bundle = load_dataset("synthetic")
    x, y = bundle.test_subset(128)
    reference = build_model("small_cnn", bundle.input_shape, bundle.num_classes, 0.5)
    trainer, dataset = _trainer("float32", "standard")
    trainer.fit(dataset, epochs=4, verbose=0)
    reference.set_weights(trainer.classifier.get_weights())
    mixed = build_model("small_cnn", bundle.input_shape, bundle.num_classes, 0.5, precision=precision)
    mixed.set_weights(reference.get_weights())
    accuracies = {}
    for name, model in (("float32", reference), (precision, mixed)):
        runner = ModelRunner(model, 128)
        correct = runner.correct(x, y)
        attack = PGD(8 / 255, 2 / 255, 10)
        x_adv = np.asarray(attack.perturb(model, tf.constant(x), tf.constant(y)))
        check_budget(x, x_adv, 8 / 255)
        accuracies[name] = runner.attack(attack, x, y, correct).robust_accuracy
    assert accuracies["float32"] < 0.9  # the attack has work to do
    assert abs(accuracies[precision] - accuracies["float32"]) <= 0.05


@pytest.mark.parametrize("method", ["pgd-at", "sglr"])
def test_the_xla_train_step_compiles_once_not_once_per_step(method):
    # Python in train_step runs only while TensorFlow traces it: counting calls
    # counts traces. The PGD loop inside must not make XLA retrace per batch.
    trainer, dataset = _trainer("float32", method)
    trainer.compile(optimizer=make_optimizer(load_config(None, {"epochs": 2}), steps=4), jit_compile=True)
    traces = []
    step = trainer.train_step
    trainer.train_step = lambda data: traces.append(1) or step(data)
    history = trainer.fit(dataset, epochs=2, verbose=0).history
    assert len(traces) == 1, f"{len(traces)} traces for 8 steps"
    assert np.isfinite(history["loss"]).all()
