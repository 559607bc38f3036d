"""Rebuild, in PyTorch, the inference function of a classifier written by
`export_graph.py`: NCHW images in [0, 1] to logits, the same numbers as the Keras
model up to float round-off (checked against the stored logits by `check`).

Needs only numpy and torch. TensorFlow's 'same' padding is asymmetric for even
inputs and stride 2 (the extra row and column go after), which a symmetric PyTorch
``padding=1`` would not match, so every 'same' convolution pads explicitly; a
network built with ``model.padding: torch`` has ZeroPadding2D layers instead,
replayed as they are.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import torch.nn.functional as F


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], value: float = 0.0):
    top, bottom = _same_padding(x.shape[2], kernel[0], stride[0])
    left, right = _same_padding(x.shape[3], kernel[1], stride[1])
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def _activate(x: torch.Tensor, name: str | None) -> torch.Tensor:
    if name in (None, "linear"):
        return x
    if name == "relu":
        return F.relu(x)
    raise ValueError(f"activation {name} has no replay")


class KerasReplay(torch.nn.Module):
    """The exported layer list, run in order. Weights are frozen parameters (attack
    libraries find the device from ``model.parameters()``)."""

    def __init__(self, ops: list[dict], arrays: dict[str, np.ndarray]):
        super().__init__()
        self.ops = ops
        self._names = {}
        for key, value in arrays.items():
            layer, weight = key.split("/", 1)
            if weight == "kernel" and value.ndim == 4:  # (kh, kw, in, out) -> (out, in, kh, kw)
                value = value.transpose(3, 2, 0, 1)
            elif weight == "kernel":  # Dense (in, out) -> (out, in)
                value = value.T
            attribute = f"w{len(self._names)}"
            self.register_parameter(attribute, torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(value)),
                                                                  requires_grad=False))
            self._names[key] = attribute

    def _w(self, layer: str, weight: str):
        attribute = self._names.get(f"{layer}/{weight}")
        return None if attribute is None else getattr(self, attribute)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {}
        for op in self.ops:
            name, kind, config = op["name"], op["type"], op["config"]
            args = [values[i] for i in op["inputs"]]
            if kind == "InputLayer":
                out = x
            elif kind == "Conv2D":
                kernel = self._w(name, "kernel")
                stride = tuple(config["strides"])
                inp = args[0]
                if config["padding"] == "same":
                    inp = _pad_same(inp, tuple(kernel.shape[2:]), stride)
                out = _activate(F.conv2d(inp, kernel, self._w(name, "bias"), stride=stride), config["activation"])
            elif kind == "ZeroPadding2D":  # model.padding: torch pads strided convs explicitly
                (top, bottom), (left, right) = config["padding"]
                out = F.pad(args[0], (left, right, top, bottom))
            elif kind == "BatchNormalization":
                out = F.batch_norm(args[0], self._w(name, "moving_mean"), self._w(name, "moving_variance"),
                                   self._w(name, "gamma"), self._w(name, "beta"), training=False,
                                   eps=config["epsilon"])
            elif kind == "ReLU":
                out = F.relu(args[0])
            elif kind == "Activation":
                out = _activate(args[0], config["activation"])
            elif kind == "Add":
                out = args[0]
                for other in args[1:]:
                    out = out + other
            elif kind == "GlobalAveragePooling2D":
                out = args[0].mean(dim=(2, 3))
            elif kind == "Flatten":  # Keras flattens NHWC
                out = args[0].permute(0, 2, 3, 1).reshape(args[0].shape[0], -1)
            elif kind == "MaxPooling2D":
                pool, stride = tuple(config["pool_size"]), tuple(config["strides"] or config["pool_size"])
                inp = args[0]
                if config["padding"] == "same":
                    inp = _pad_same(inp, pool, stride, value=-math.inf)
                out = F.max_pool2d(inp, pool, stride)
            elif kind == "Dense":
                out = _activate(F.linear(args[0], self._w(name, "kernel"), self._w(name, "bias")),
                                config["activation"])
            elif kind == "Dropout":
                out = args[0]
            else:
                raise ValueError(f"layer {name} of type {kind} has no replay")
            values[name] = out
        return values[self.ops[-1]["name"]]


def load(path: str) -> tuple[KerasReplay, dict[str, np.ndarray]]:
    """The replayed model (eval mode) and the stored points (``x`` as NCHW, ``y``, ``logits``), if any."""
    with np.load(path) as data:
        ops = json.loads(str(data["__graph__"]))
        points = {key: data[key] for key in ("x", "y", "logits", "indices") if key in data}
        arrays = {key: data[key] for key in data.files if "/" in key}
    model = KerasReplay(ops, arrays).eval()
    if "x" in points:
        points["x"] = np.ascontiguousarray(points["x"].transpose(0, 3, 1, 2))
    return model, points


def check(model: KerasReplay, points: dict, batch_size: int = 250, device: str = "cpu") -> float:
    """Largest absolute difference between the replay's logits and the Keras model's."""
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(points["x"]), batch_size):
            logits = model(torch.from_numpy(points["x"][i:i + batch_size]).to(device)).cpu().numpy()
            worst = max(worst, float(np.abs(logits - points["logits"][i:i + batch_size]).max()))
    return worst
