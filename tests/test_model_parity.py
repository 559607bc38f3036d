"""The built-in networks as their PyTorch twins (model.init / model.padding).

PyTorch's Conv2d and Linear draw weights (and Linear biases) from
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), whose standard deviation is
1/sqrt(3 fan_in); PyTorch's ``padding=1`` pads a strided 3x3 convolution by one
pixel on every side. The checks here are against those formulas and a plain numpy
convolution, so they run without torch; the torch-based ones are skipped without it.
"""

import json

import keras
import numpy as np
import pytest

from sglr_keras.config import config_from_dict, load_config
from sglr_keras.errors import UserError
from sglr_keras.models import build_model
from tests.conftest import run_cli


def _fan_in(weight) -> int:
    shape = tuple(weight.shape)
    return int(np.prod(shape[:-1])) if len(shape) == 4 else shape[0]


def _weights_with_fan_in(model):
    """(name, values, fan_in) of every conv kernel, dense kernel and dense bias."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            yield layer.name, layer.kernel.numpy(), _fan_in(layer.kernel)
        elif isinstance(layer, keras.layers.Dense):
            yield layer.name, layer.kernel.numpy(), _fan_in(layer.kernel)
            yield layer.name + "/bias", layer.bias.numpy(), _fan_in(layer.kernel)


@pytest.mark.parametrize("arch, shape", [("preact_resnet18", (32, 32, 3)), ("resnet18", (32, 32, 3)),
                                         ("small_cnn", (28, 28, 1))])
def test_torch_init_matches_pytorch_defaults_layer_by_layer(arch, shape):
    model = build_model(arch, shape, 10)
    checked = 0
    for name, values, fan_in in _weights_with_fan_in(model):
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(values).max() <= bound * (1 + 1e-6), name  # float32 rounding of the bound
        if values.size >= 1000:  # enough draws for the standard deviation to be within 5%
            assert values.std() == pytest.approx(bound / np.sqrt(3), rel=0.05), name
            checked += 1
    assert checked >= 3


def test_keras_init_keeps_he_normal_and_glorot():
    model = build_model("preact_resnet18", (32, 32, 3), 10, init="keras")
    stem = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert stem.kernel.numpy().std() == pytest.approx(np.sqrt(2 / 27), rel=0.12)  # he_normal (truncated)
    logits = model.get_layer("logits")
    assert np.all(logits.bias.numpy() == 0)


def _conv_nhwc(x, kernel, stride, pad_before, pad_after):
    """A plain convolution (cross-correlation, as both frameworks compute it)."""
    x = np.pad(x, ((0, 0), (pad_before, pad_after), (pad_before, pad_after), (0, 0)))
    k = kernel.shape[0]
    out = (x.shape[1] - k) // stride + 1
    result = np.zeros((x.shape[0], out, out, kernel.shape[-1]), np.float64)
    for i in range(out):
        for j in range(out):
            window = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            result[:, i, j, :] = np.tensordot(window, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return result


def _first_strided_conv(model):
    return next(layer for layer in model.layers
                if isinstance(layer, keras.layers.Conv2D) and layer.strides == (2, 2) and layer.kernel_size == (3, 3))


@pytest.mark.parametrize("arch", ["resnet18", "preact_resnet18"])
def test_torch_padding_pads_a_strided_conv_one_pixel_on_every_side(arch):
    model = build_model(arch, (32, 32, 3), 10, width=0.125, padding="torch")
    conv = _first_strided_conv(model)
    padder = conv._inbound_nodes[0].input_tensors[0]._keras_history.operation
    assert isinstance(padder, keras.layers.ZeroPadding2D)
    probe = keras.Model(model.input, [padder.input, conv.output])
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    block_input, block_output = (np.asarray(t) for t in probe(x))
    expected = _conv_nhwc(block_input, conv.kernel.numpy(), 2, 1, 1)
    np.testing.assert_allclose(block_output, expected, atol=1e-4)


def test_keras_padding_is_the_shifted_grid_torch_padding_avoids():
    model = build_model("resnet18", (32, 32, 3), 10, width=0.125, padding="keras")
    conv = _first_strided_conv(model)
    probe = keras.Model(model.input, [conv.input, conv.output])
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    block_input, block_output = (np.asarray(t) for t in probe(x))
    kernel = conv.kernel.numpy()
    np.testing.assert_allclose(block_output, _conv_nhwc(block_input, kernel, 2, 0, 1), atol=1e-4)
    assert np.abs(block_output - _conv_nhwc(block_input, kernel, 2, 1, 1)).max() > 1e-2


def test_padding_keeps_output_shapes_and_parameter_counts():
    for shape in ((32, 32, 3), (28, 28, 1)):
        torch_like = build_model("preact_resnet18", shape, 10, width=0.25, padding="torch")
        keras_like = build_model("preact_resnet18", shape, 10, width=0.25, padding="keras")
        assert torch_like.count_params() == keras_like.count_params()
        assert torch_like.output_shape == keras_like.output_shape


def test_pytorch_conv_gives_the_same_strided_output():
    torch = pytest.importorskip("torch")
    model = build_model("resnet18", (32, 32, 3), 10, width=0.125, padding="torch")
    conv = _first_strided_conv(model)
    padder = conv._inbound_nodes[0].input_tensors[0]._keras_history.operation
    probe = keras.Model(model.input, [padder.input, conv.output])
    x = np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    block_input, block_output = (np.asarray(t) for t in probe(x))
    weight = torch.from_numpy(conv.kernel.numpy().transpose(3, 2, 0, 1).copy())
    reference = torch.nn.functional.conv2d(torch.from_numpy(block_input.transpose(0, 3, 1, 2).copy()), weight,
                                           stride=2, padding=1)
    np.testing.assert_allclose(block_output, reference.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_pytorch_default_init_has_the_same_spread():
    torch = pytest.importorskip("torch")
    model = build_model("preact_resnet18", (32, 32, 3), 10)
    ours = [values.std() for _, values, _ in _weights_with_fan_in(model)]
    theirs = []
    for _, values, fan_in in _weights_with_fan_in(model):
        layer = torch.nn.Linear(fan_in, max(1, values.size // fan_in))
        theirs.append(float(layer.weight.detach().std()))
    big = [i for i, (_, values, _) in enumerate(_weights_with_fan_in(model)) if values.size >= 1000]
    for i in big:
        assert ours[i] == pytest.approx(theirs[i], rel=0.05)


def test_config_defaults_to_torch_and_refuses_unknown_builds():
    assert (load_config().model.init, load_config().model.padding) == ("torch", "torch")
    with pytest.raises(UserError, match="config key 'model.init': unknown value 'pytorch'.*choose one of torch, keras"):
        load_config(assignments=["model.init=pytorch"])
    with pytest.raises(UserError, match="model.padding"):
        load_config(assignments=["model.padding=same"])


def test_a_run_folder_written_before_the_keys_existed_keeps_keras():
    saved = load_config().to_dict()
    del saved["model"]["init"], saved["model"]["padding"]
    config = config_from_dict(json.loads(json.dumps(saved)))
    assert (config.model.init, config.model.padding) == ("keras", "keras")


def test_train_records_init_and_padding(tmp_path, tiny_config_file):
    result = run_cli("train", "--config", tiny_config_file(epochs=1), "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (config["model"]["init"], config["model"]["padding"]) == ("torch", "torch")
    assert (run["init"], run["padding"]) == ("torch", "torch")
