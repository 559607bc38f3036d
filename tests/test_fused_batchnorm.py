"""use_fused_batch_norm: TensorFlow's fused kernels compute what Keras's batch norm
computes (float32 rounding; bfloat16 no further from float32 than Keras's own
bfloat16 path), update the same moving averages, and leave the saved model a
plain Keras model. Layers the kernel does not serve keep Keras's call."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sglr_keras as sk
from sglr_keras.models import build_model
from sglr_keras.models.fused_batchnorm import restore_keras_batch_norm


def _twins(arch="preact_resnet18", shape=(16, 16, 3), precision="float32"):
    """The same network twice, one on Keras's batch-norm ops and one fused."""
    keras_ops = build_model(arch, shape, 10, width=0.25, precision=precision)
    fused = build_model(arch, shape, 10, width=0.25, precision=precision)
    # build_model fuses every batch norm (17 in PreAct ResNet-18, 20 in ResNet-18); undo it for the reference.
    assert restore_keras_batch_norm(keras_ops) == sk.use_fused_batch_norm(fused) == {"preact_resnet18": 17,
                                                                                     "resnet18": 20}[arch]
    fused.set_weights(keras_ops.get_weights())
    return keras_ops, fused


def _pass(model, x, training):
    """Logits, input gradient and weight gradients of one forward-backward pass."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=training)
        loss = tf.reduce_sum(tf.nn.log_softmax(logits)[:, 0])
    grad_x, grad_w = tape.gradient(loss, [x, model.trainable_weights])
    return [logits.numpy(), grad_x.numpy(), np.concatenate([g.numpy().ravel() for g in grad_w])]


def _relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("batch", [1, 8])
def test_float32_fused_batch_norm_computes_what_keras_computes(training, batch):
    keras_ops, fused = _twins()
    x = tf.constant(np.random.default_rng(batch).uniform(size=(batch, 16, 16, 3)).astype("float32"))
    for ours, theirs in zip(_pass(fused, x, training), _pass(keras_ops, x, training)):
        assert _relative(theirs, ours) < 1e-4
    # The moving averages follow Keras's momentum and biased variance (no n / (n - 1)).
    for ours, theirs in zip(fused.non_trainable_weights, keras_ops.non_trainable_weights):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-6)
        assert np.isfinite(ours.numpy()).all()


@pytest.mark.parametrize("training", [True, False])
def test_bfloat16_fused_batch_norm_is_as_close_to_float32_as_keras_bfloat16(training):
    reference = build_model("resnet18", (32, 32, 3), 10, width=0.25)
    keras_ops, fused = _twins("resnet18", (32, 32, 3), "mixed_bfloat16")
    fused.set_weights(reference.get_weights())
    keras_ops.set_weights(reference.get_weights())
    x = tf.constant(np.random.default_rng(0).uniform(size=(16, 32, 32, 3)).astype("float32"))
    exact = _pass(reference, x, training)
    for f32, ours, theirs in zip(exact, _pass(fused, x, training), _pass(keras_ops, x, training)):
        assert _relative(f32, ours) <= 1.2 * _relative(f32, theirs) + 1e-3


def test_layers_the_kernel_does_not_serve_keep_keras_call():
    inputs = keras.Input((6,))
    flat = keras.layers.BatchNormalization()(inputs)  # 2-D: not the 4-D kernel's shape
    images = keras.layers.Reshape((1, 2, 3))(flat)
    channels_first = keras.layers.BatchNormalization(axis=1)(images)
    synced = keras.layers.BatchNormalization(synchronized=True)(channels_first)
    model = keras.Model(inputs, keras.layers.Flatten()(synced))
    assert sk.use_fused_batch_norm(model) == 2  # the 2-D and axis-1 layers switch but fall back per call
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    before = [w.numpy() for w in model.non_trainable_weights]
    out = model(x, training=True)
    assert out.shape == (4, 6) and np.isfinite(out.numpy()).all()
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(before, model.non_trainable_weights))


def test_a_fused_model_saves_as_plain_keras_and_loads_without_sglr(tmp_path):
    model = build_model("small_cnn", (8, 8, 1), 3, width=0.25)
    assert sk.use_fused_batch_norm(model) == 4  # already fused by build_model: nothing changes twice
    x = np.random.default_rng(0).uniform(size=(5, 8, 8, 1)).astype("float32")
    model(x, training=True)
    model.save(tmp_path / "m.keras")
    plain = keras.saving.load_model(tmp_path / "m.keras", compile=False)  # no custom objects needed
    assert all(type(layer).__module__.startswith("keras") for layer in plain.layers)
    np.testing.assert_allclose(plain(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_the_trainer_fuses_a_users_model_unless_asked_not_to():
    def users_model():
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs)))
        return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))

    fused, kept = users_model(), users_model()
    sk.AdversarialTrainer(fused)
    sk.AdversarialTrainer(kept, fused_batch_norm=False)
    assert getattr(fused.layers[2], "_sglr_fused_batch_norm", False)
    assert not getattr(kept.layers[2], "_sglr_fused_batch_norm", False)


def test_a_nested_shared_model_has_its_batch_norm_fused_once():
    inner = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.BatchNormalization()])
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, inner(inner(inputs)))  # the same inner model twice
    assert sk.use_fused_batch_norm(model) == 1
    assert getattr(inner.layers[0], "_sglr_fused_batch_norm", False)
