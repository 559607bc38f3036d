"""Classifiers that map pixels in [0, 1] to logits.

CIFAR-style ResNets (3x3 stem, no max-pool), PreAct ResNet-18, WideResNets and a
small CNN for small images, built with the Keras functional API so that a saved
``.keras`` file is an ordinary Keras model any tool can load. Batch norm uses
PyTorch's running-average momentum (0.1, i.e. Keras momentum 0.9) and epsilon
(1e-5), as the reference code does.

Two build options decide how close a network is to its PyTorch twin (the
literature's numbers, the SGLR authors' included, come from PyTorch code):

- ``init="torch"`` (default) draws conv and dense weights, and dense biases, from
  PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``; ``"keras"`` uses
  ``he_normal`` convs and a ``glorot_uniform`` dense layer (about 6x and 5x the
  variance). The variance matters: with ``"keras"`` a network memorises noisy
  labels about twice as fast, and SGLR's table then follows the memorised labels
  (docs/method.md, "Initialisation").
- ``padding="torch"`` (default) pads a strided k x k convolution by k // 2 on every
  side, as PyTorch's ``padding=1`` does; ``"keras"`` uses ``padding="same"``, which
  for even inputs pads 0 before and 1 after, so every downsampling samples a grid
  shifted by one pixel against its 1x1 shortcut.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import layers

from sglr_keras.config import MODEL_BUILDS
from sglr_keras.errors import UserError
from sglr_keras.models.fused_batchnorm import use_fused_batch_norm
from sglr_keras.architectures import ARCHITECTURE_NAMES, canonical_arch_name, validate_arch_name  # noqa: F401

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class _BuildOptions:
    sync_batchnorm: bool = False
    init: str = "torch"
    padding: str = "torch"


# Set by build_model for the duration of one build.
_OPTIONS = _BuildOptions()


def _channels(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


def _torch_uniform(fan_in: int):
    # PyTorch's Conv2d/Linear reset_parameters: kaiming_uniform_(a=sqrt(5)) for the
    # weight and U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias, i.e. both uniform
    # with bound 1/sqrt(fan_in). (The kernel's fan_in Keras computes itself.)
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _conv(filters, kernel, stride=1):
    """A bias-free conv as a function of its input: symmetric zero padding for a
    strided conv under ``padding="torch"``, Keras "same" padding otherwise."""
    def apply(x):
        padding = "same"
        if _OPTIONS.padding == "torch" and stride > 1 and kernel > 1:
            x = layers.ZeroPadding2D(kernel // 2)(x)
            padding = "valid"
        fan_in = kernel * kernel * x.shape[-1]
        initializer = _torch_uniform(fan_in) if _OPTIONS.init == "torch" else "he_normal"
        return layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                             kernel_initializer=initializer)(x)
    return apply


def _dense(units, x, **kwargs):
    fan_in = x.shape[-1]
    if _OPTIONS.init == "torch":
        kwargs.update(kernel_initializer=_torch_uniform(fan_in), bias_initializer=_torch_uniform(fan_in))
    return layers.Dense(units, **kwargs)(x)


def _bn(name=None):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=_OPTIONS.sync_batchnorm,
                                     name=name)


def _logits(x, num_classes):
    # float32 logits under a mixed policy: every loss and the SGLR table read them.
    return _dense(num_classes, x, name="logits", dtype="float32")


def _head(x, num_classes):
    return _logits(layers.GlobalAveragePooling2D()(x), num_classes)


# --- ResNet (He et al. 2016), CIFAR variant ------------------------------------

def _basic_block(x, filters, stride):
    shortcut = x
    y = layers.ReLU()(_bn()(_conv(filters, 3, stride)(x)))
    y = _bn()(_conv(filters, 3)(y))
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _bn()(_conv(filters, 1, stride)(x))
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _bottleneck_block(x, filters, stride):
    out_filters = 4 * filters
    shortcut = x
    y = layers.ReLU()(_bn()(_conv(filters, 1)(x)))
    y = layers.ReLU()(_bn()(_conv(filters, 3, stride)(y)))
    y = _bn()(_conv(out_filters, 1)(y))
    if stride != 1 or x.shape[-1] != out_filters:
        shortcut = _bn()(_conv(out_filters, 1, stride)(x))
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _resnet(block, blocks_per_stage, input_shape, num_classes, width, name):
    inputs = keras.Input(input_shape, name="image")
    x = layers.ReLU()(_bn()(_conv(_channels(64, width), 3)(inputs)))
    for stage, blocks in enumerate(blocks_per_stage):
        filters = _channels(64 * 2**stage, width)
        for i in range(blocks):
            x = block(x, filters, 2 if (i == 0 and stage > 0) else 1)
    return keras.Model(inputs, _head(x, num_classes), name=name)


# --- PreAct ResNet (He et al. 2016b) ------------------------------------------------

def _preact_block(x, filters, stride):
    pre = layers.ReLU()(_bn()(x))
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, stride)(pre)
    y = _conv(filters, 3, stride)(pre)
    y = _conv(filters, 3)(layers.ReLU()(_bn()(y)))
    return layers.Add()([y, shortcut])


def _preact_resnet18(input_shape, num_classes, width):
    inputs = keras.Input(input_shape, name="image")
    x = _conv(_channels(64, width), 3)(inputs)
    for stage in range(4):
        for i in range(2):
            x = _preact_block(x, _channels(64 * 2**stage, width), 2 if (i == 0 and stage > 0) else 1)
    x = layers.ReLU()(_bn()(x))
    return keras.Model(inputs, _head(x, num_classes), name="preact_resnet18")


# --- WideResNet (Zagoruyko & Komodakis 2016): pre-activation blocks, wider --------

def _wide_resnet(depth, widen, input_shape, num_classes, width, name):
    blocks = (depth - 4) // 6
    inputs = keras.Input(input_shape, name="image")
    x = _conv(_channels(16, width), 3)(inputs)
    for stage, base in enumerate((16, 32, 64)):
        for i in range(blocks):
            x = _preact_block(x, _channels(base * widen, width), 2 if (i == 0 and stage > 0) else 1)
    x = layers.ReLU()(_bn()(x))
    return keras.Model(inputs, _head(x, num_classes), name=name)


# --- small CNN for 28x28 and smaller images ----------------------------------------

def _small_cnn(input_shape, num_classes, width):
    """The four-conv network used for MNIST in TRADES (Zhang et al. 2019) with
    batch norm after each conv (without it, PGD training from scratch sits at
    chance for epochs) and 'same' padding so 8x8 inputs fit too."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for filters in (32, 64):
        for _ in range(2):
            x = layers.ReLU()(_bn()(_conv(_channels(filters, width), 3)(x)))
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    for _ in range(2):
        x = _dense(_channels(200, width), x, activation="relu")
    return keras.Model(inputs, _logits(x, num_classes), name="small_cnn")


ARCHITECTURES = {
    "resnet18": lambda s, c, w: _resnet(_basic_block, (2, 2, 2, 2), s, c, w, "resnet18"),
    "resnet34": lambda s, c, w: _resnet(_basic_block, (3, 4, 6, 3), s, c, w, "resnet34"),
    "resnet50": lambda s, c, w: _resnet(_bottleneck_block, (3, 4, 6, 3), s, c, w, "resnet50"),
    "preact_resnet18": _preact_resnet18,
    "wrn34_10": lambda s, c, w: _wide_resnet(34, 10, s, c, w, "wrn34_10"),
    "wrn28_10": lambda s, c, w: _wide_resnet(28, 10, s, c, w, "wrn28_10"),
    "small_cnn": _small_cnn,
}


assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES, "sglr_keras.architectures lists the architectures built here"


def validate_build_option(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"unknown {key} '{value}'; choose one of {', '.join(allowed)}")


def build_model(arch: str, input_shape, num_classes: int, width: float = 1.0,
                sync_batchnorm: bool = False, precision: str = "float32",
                init: str = "torch", padding: str = "torch") -> keras.Model:
    """Build ``arch`` for images of ``input_shape`` (H, W, C) in [0, 1].

    ``sync_batchnorm`` makes batch norm use the statistics of the global batch
    across replicas (the same numbers as one device would compute), at the cost
    of one all-reduce per layer. ``precision`` is a Keras dtype policy
    (``mixed_float16``, ``mixed_bfloat16``) for every layer but the float32
    logits; the input stays float32, so attacks differentiate w.r.t. float32 pixels.
    Batch norm runs with TensorFlow's fused kernels (:func:`use_fused_batch_norm`).
    ``init`` and ``padding`` (``"torch"`` or ``"keras"``) are explained in the
    module docstring.

    >>> model = build_model("preact_resnet18", (32, 32, 3), 10, width=0.25)
    >>> model.output_shape
    (None, 10)
    """
    global _OPTIONS
    validate_arch_name(arch)
    validate_build_option("model.init", init, MODEL_BUILDS)
    validate_build_option("model.padding", padding, MODEL_BUILDS)
    _OPTIONS = _BuildOptions(sync_batchnorm, init, padding)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        model = ARCHITECTURES[canonical_arch_name(arch)](tuple(input_shape), int(num_classes), width)
    finally:
        _OPTIONS = _BuildOptions()
        keras.config.set_dtype_policy(previous_policy)
    use_fused_batch_norm(model)
    return model
