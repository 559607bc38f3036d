import numpy as np
import pytest

from sglr_keras.errors import UserError
from sglr_keras.models import ARCHITECTURES, build_model


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize("arch, expected", [
    # The CIFAR ResNet-18 of the reference code (PyTorch counts trainable parameters).
    ("resnet18", 11_173_962),
    ("preact_resnet18", 11_172_170),
    ("wrn34_10", 46_160_474),
])
def test_parameter_counts_match_the_literature(arch, expected):
    assert _trainable(build_model(arch, (32, 32, 3), 10)) == expected


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_arch_maps_images_to_logits(arch):
    shape = (28, 28, 1) if arch == "small_cnn" else (32, 32, 3)
    model = build_model(arch, shape, 7, width=0.25 if arch != "small_cnn" else 1.0)
    logits = model(np.random.default_rng(0).uniform(size=(2, *shape)).astype(np.float32))
    assert logits.shape == (2, 7)


def test_width_multiplier_scales_channels():
    assert _trainable(build_model("resnet18", (32, 32, 3), 10, width=0.5)) < _trainable(
        build_model("resnet18", (32, 32, 3), 10)) / 3


def test_unknown_arch():
    with pytest.raises(UserError, match="unknown arch 'vgg16'"):
        build_model("vgg16", (32, 32, 3), 10)
