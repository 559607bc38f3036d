"""Classifiers that map pixels in [0, 1] to logits.

CIFAR-style ResNets (3x3 stem, no max-pool), PreAct ResNet-18, WideResNets and a
small CNN for small images, built with the Keras functional API so that a saved
``.keras`` file is an ordinary Keras model any tool can load. Batch norm uses
PyTorch's running-average momentum (0.1, i.e. Keras momentum 0.9) and epsilon
(1e-5), as the reference code does.
"""

from __future__ import annotations

import keras
from keras import layers

from sglr_keras.errors import UserError

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# Set by build_model for the duration of one build (see its sync_batchnorm).
_SYNC_BATCHNORM = False


def _channels(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


def _conv(filters, kernel, stride=1, name=None):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)


def _bn(name=None):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, synchronized=_SYNC_BATCHNORM,
                                     name=name)


def _logits(num_classes):
    # float32 logits under a mixed policy: every loss and the SGLR table read them.
    return layers.Dense(num_classes, name="logits", dtype="float32")


def _head(x, num_classes):
    return _logits(num_classes)(layers.GlobalAveragePooling2D()(x))


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
        x = layers.Dense(_channels(200, width), activation="relu")(x)
    return keras.Model(inputs, _logits(num_classes)(x), name="small_cnn")


ARCHITECTURES = {
    "resnet18": lambda s, c, w: _resnet(_basic_block, (2, 2, 2, 2), s, c, w, "resnet18"),
    "resnet34": lambda s, c, w: _resnet(_basic_block, (3, 4, 6, 3), s, c, w, "resnet34"),
    "resnet50": lambda s, c, w: _resnet(_bottleneck_block, (3, 4, 6, 3), s, c, w, "resnet50"),
    "preact_resnet18": _preact_resnet18,
    "wrn34_10": lambda s, c, w: _wide_resnet(34, 10, s, c, w, "wrn34_10"),
    "wrn28_10": lambda s, c, w: _wide_resnet(28, 10, s, c, w, "wrn28_10"),
    "small_cnn": _small_cnn,
}


def canonical_arch_name(name: str) -> str:
    return name.lower().replace("-", "_")


def validate_arch_name(name: str) -> None:
    if canonical_arch_name(name) not in ARCHITECTURES:
        raise UserError(f"unknown arch '{name}'; choose one of {', '.join(ARCHITECTURES)}")


def build_model(arch: str, input_shape, num_classes: int, width: float = 1.0,
                sync_batchnorm: bool = False, precision: str = "float32") -> keras.Model:
    """Build ``arch`` for images of ``input_shape`` (H, W, C) in [0, 1].

    ``sync_batchnorm`` makes batch norm use the statistics of the global batch
    across replicas (the same numbers as one device would compute), at the cost
    of one all-reduce per layer. ``precision`` is a Keras dtype policy
    (``mixed_float16``, ``mixed_bfloat16``) for every layer but the float32
    logits; the input stays float32, so attacks differentiate w.r.t. float32 pixels.
    """
    global _SYNC_BATCHNORM
    validate_arch_name(arch)
    _SYNC_BATCHNORM = sync_batchnorm
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        return ARCHITECTURES[canonical_arch_name(arch)](tuple(input_shape), int(num_classes), width)
    finally:
        _SYNC_BATCHNORM = False
        keras.config.set_dtype_policy(previous_policy)
