"""Keras batch norm run as TensorFlow's fused batch-norm kernel.

Keras 3's ``BatchNormalization`` computes a 4-D batch norm from separate ops:
an upcast to float32, the moments, the normalisation and a downcast, and the
same chain again, differentiated, on the way back. TensorFlow has one kernel for
each direction (``FusedBatchNormV3`` and its gradient; oneDNN's on CPUs, cuDNN's
on GPUs) that reads bfloat16 or float16 activations, computes in float32 and
writes the input's dtype. Measured on an AMX CPU, the fused kernels make a
bfloat16 PGD-10 train step of ResNet-18 about 15% faster (docs/bench/README.md).

``use_fused_batch_norm(model)`` switches a model's batch-norm layers to the fused
kernels in place, without changing what they compute (the same normalisation,
the same moving averages with Keras's momentum and biased variance) beyond
float32 rounding, and without changing how the model is saved: the layers stay
Keras ``BatchNormalization`` layers, and a ``.keras`` file written afterwards loads
anywhere as before. Layers the fused kernel does not serve keep Keras's own call
at every call where it does not apply: synchronized batch norm, renormalisation,
a mask, an axis other than the last, an input that is not 4-D, or (on a
GPU) an epsilon below cuDNN's 1e-5.

In inference mode a batch norm is an affine map per channel,
``s * x + beta - s * moving_mean`` with ``s = gamma / sqrt(moving_variance + epsilon)``.
Where it reads a convolution's output and nothing else does, the pair is one
convolution with kernel ``s * K`` and a bias. An attack runs many inference
passes of the same weights and differentiates each: ``folded_batch_norm(model)``
folds every such pair once, on entry, and the passes inside run the folded
convolution (which TensorFlow fuses with its bias and a following ReLU into one
oneDNN kernel) instead of a convolution, a batch norm and, on the way back, the
batch norm's gradient with reductions the input gradient does not need. On the
same AMX CPU this made the bfloat16 PGD-10 train step of ResNet-18 another 1.30x
faster, float32 1.04x (docs/bench/README.md).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import keras
import tensorflow as tf

_FUSED = "_sglr_fused_batch_norm"
# cuDNN refuses a smaller epsilon (1e-5, plus float32 rounding).
_CUDNN_MIN_EPSILON = 1.001e-5


def use_fused_batch_norm(model: keras.Model) -> int:
    """Run every eligible ``BatchNormalization`` layer of ``model`` (nested models
    included) with TensorFlow's fused kernel; return how many layers were
    switched. Synchronized and renormalising layers are left alone; a switched
    layer still takes Keras's call for an input the kernel does not serve (not
    4-D, an axis other than the last, a mask).

    Call it before the model is first traced (compiled into a ``tf.function``):
    a function traced earlier keeps the ops it was traced with. Calling it twice
    changes nothing.

    >>> import keras, numpy as np
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3)(inputs)
    >>> x = keras.layers.BatchNormalization()(x)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    >>> use_fused_batch_norm(model)
    1
    >>> model(np.zeros((2, 8, 8, 3), "float32")).shape
    TensorShape([2, 2])
    """
    switched = 0
    for layer in _all_layers(model):
        if not isinstance(layer, keras.layers.BatchNormalization) or layer.synchronized or layer.renorm:
            continue
        if not getattr(layer, _FUSED, False):
            layer.call = functools.partial(_fused_call, layer, layer.call)
            setattr(layer, _FUSED, True)
        switched += 1
    return switched


def restore_keras_batch_norm(model: keras.Model) -> int:
    """Undo :func:`use_fused_batch_norm` (for comparisons: benchmarks and tests);
    return how many layers went back to Keras's call."""
    restored = 0
    for layer in _all_layers(model):
        if getattr(layer, _FOLDABLE, False):
            del layer.call
            delattr(layer, _FOLDABLE)
        if getattr(layer, _FUSED, False):
            del layer.call
            delattr(layer, _FUSED)
            restored += 1
    return restored


@contextlib.contextmanager
def folded_batch_norm(model):
    """Within this context, inference calls of ``model`` (``training=False``) run
    each batch norm that follows a convolution folded into it; yields the number
    of pairs folded. The folded weights are computed once, on entry, from the
    weights and moving statistics as they are then: for passes that do not change
    them (an attack's), never for training calls. A model that is not a
    functional Keras model, or has no such pair, runs as it is.

    A pair is folded when the batch norm has the fused call
    (:func:`use_fused_batch_norm`) and the convolution is a plain channels-last
    ``Conv2D`` with no activation that does not compute in float16, each layer
    is called once in the model, and the convolution's output goes to the batch
    norm alone. Our PGD, FGSM and
    training attacks run their steps inside it, and APGD and FAB each gradient;
    use it around an attack loop of your own. A training call inside it raises
    ``RuntimeError``.

    >>> import keras, numpy as np, tensorflow as tf
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    >>> _ = use_fused_batch_norm(model)
    >>> x = tf.random.uniform((2, 8, 8, 3))
    >>> with folded_batch_norm(model) as pairs:
    ...     folded = model(x, training=False)
    >>> pairs, bool(np.allclose(folded, model(x, training=False), atol=1e-5))
    (1, True)
    """
    folded = {}
    for conv, norm in conv_batch_norm_pairs(model):
        if not getattr(conv, _FOLDABLE, False):
            conv.call = functools.partial(_folding_conv_call, conv, conv.call)
            setattr(conv, _FOLDABLE, True)
        folded[id(conv)] = _fold(conv, norm)
        folded[id(norm)] = None
    outer = _folded_layers()
    _STATE.folded = {**outer, **folded}
    try:
        yield len(folded) // 2
    finally:
        _STATE.folded = outer


def conv_batch_norm_pairs(model) -> list:
    """The (``Conv2D``, ``BatchNormalization``) pairs of ``model`` that
    :func:`folded_batch_norm` folds, in the model's layer order."""
    if not isinstance(model, keras.Model):
        return []
    layers = _all_layers(model)
    model_outputs = set()
    for layer in layers:
        if isinstance(layer, keras.Model):
            with contextlib.suppress(AttributeError, ValueError):
                model_outputs.update(id(tensor) for tensor in layer.outputs)
    pairs = []
    for norm in layers:
        nodes = getattr(norm, "_inbound_nodes", [])
        if not getattr(norm, _FUSED, False) or len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
            continue
        history = getattr(nodes[0].input_tensors[0], "_keras_history", None)
        conv = history.operation if history else None
        if _foldable(conv, norm) and id(nodes[0].input_tensors[0]) not in model_outputs:
            pairs.append((conv, norm))
    return pairs


_FOLDABLE = "_sglr_foldable_conv"
# Layer ids folded in this thread (replicas trace in threads of their own).
_STATE = threading.local()


def _folded_layers() -> dict:
    return getattr(_STATE, "folded", {})


def _foldable(conv, norm) -> bool:
    # Not in float16: s = gamma / sqrt(variance + epsilon) of a near-constant
    # channel can carry the folded kernel and bias past float16's 65504, where
    # the unfolded batch norm computes in float32 and writes a normalised value.
    return (type(conv) is keras.layers.Conv2D and conv.data_format == "channels_last" and conv.compute_dtype != "float16"
            and conv.activation is keras.activations.linear and getattr(conv, "quantization_mode", None) is None
            and len(getattr(conv, "_inbound_nodes", [])) == 1 and len(getattr(conv, "_outbound_nodes", [])) == 1
            and norm.axis in (-1, 3) and not norm.synchronized and not norm.renorm)


def _fold(conv, norm):
    """The kernel and bias of ``norm(conv(x))`` in inference mode, in the conv's compute dtype."""
    kernel = tf.cast(tf.convert_to_tensor(conv.kernel), tf.float32)
    gamma, beta, moving_mean, moving_variance = _float32_parameters(norm, kernel.shape[-1])
    scale = gamma * tf.math.rsqrt(moving_variance + norm.epsilon)
    bias = beta - moving_mean * scale
    if conv.use_bias:
        bias += tf.cast(conv.bias, tf.float32) * scale
    return tf.cast(kernel * scale, conv.compute_dtype), tf.cast(bias, conv.compute_dtype)


def _folding_conv_call(layer, keras_call, inputs):
    folded = _folded_layers().get(id(layer))
    if folded is None:
        return keras_call(inputs)
    kernel, bias = folded
    # BiasAdd (not Keras's broadcast add): TensorFlow fuses Conv2D + BiasAdd (+ Relu).
    return tf.nn.bias_add(layer.convolution_op(inputs, kernel), bias)


def _all_layers(model):
    """``model`` and every layer in it, nested models' layers included, each once."""
    layers = {}
    stack = [model]
    while stack:
        layer = stack.pop()
        layers.setdefault(id(layer), layer)
        stack.extend(child for child in getattr(layer, "layers", None) or [] if id(child) not in layers)
    return list(layers.values())


def _fused_call(layer, keras_call, inputs, training=None, mask=None):
    if id(layer) in _folded_layers():
        if training and layer.trainable:
            # The convolution before it has already applied the moving statistics.
            raise RuntimeError(f"{layer.name}: a training call inside folded_batch_norm, which is for inference")
        return tf.cast(inputs, layer.compute_dtype)  # the convolution before it applied this batch norm
    rank = len(inputs.shape)
    axis = layer.axis if layer.axis >= 0 else layer.axis + rank
    if mask is not None or rank != 4 or axis != rank - 1 or (layer.epsilon < _CUDNN_MIN_EPSILON and _has_gpu()):
        return keras_call(inputs, training=training, mask=mask)
    x = inputs
    if x.dtype not in (tf.float16, tf.bfloat16, tf.float32) or (x.dtype == tf.bfloat16 and _has_gpu()):
        # bfloat16 batch norm is registered for CPUs; elsewhere compute in float32 as Keras does.
        x = tf.cast(x, tf.float32)
    channels = x.shape[-1]
    gamma, beta, moving_mean, moving_variance = _float32_parameters(layer, channels)
    if training and layer.trainable:
        y, mean, sample_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=tf.zeros_like(moving_mean), variance=tf.zeros_like(moving_variance),
            epsilon=layer.epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        # The kernel reports the sample variance (divided by n - 1); Keras averages the biased one.
        n = tf.cast(tf.size(x) // channels, tf.float32)
        variance = sample_variance * (tf.maximum(n - 1.0, 1.0) / n)
        momentum = layer.momentum
        layer.moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
        layer.moving_variance.assign(moving_variance * momentum + variance * (1.0 - momentum))
    else:
        y = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=moving_mean, variance=moving_variance, epsilon=layer.epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=False)[0]
    return tf.cast(y, layer.compute_dtype)


def _float32_parameters(layer, channels: int):
    """``(gamma, beta, moving_mean, moving_variance)`` of a batch-norm layer in
    float32, with 1 and 0 for a layer without scale or center."""
    gamma = tf.cast(layer.gamma, tf.float32) if layer.scale else tf.ones([channels], tf.float32)
    beta = tf.cast(layer.beta, tf.float32) if layer.center else tf.zeros([channels], tf.float32)
    return gamma, beta, tf.cast(layer.moving_mean, tf.float32), tf.cast(layer.moving_variance, tf.float32)


@functools.cache
def _has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))
