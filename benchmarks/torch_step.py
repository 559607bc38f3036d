"""Time a PyTorch reference of the PGD-AT train step: the SGLR authors' AT step
(PGD from a uniform start with the network in eval mode, a train-mode forward on
the adversarial batch, cross-entropy, SGD with momentum and weight decay) on the
same architecture and batch as ``train_step.py``, in float32 and bfloat16
autocast, NCHW and channels_last. Needs torch (the ``bench`` extra); runs in its
own process (PyTorch and TensorFlow each bring their own OpenMP/oneDNN).

    python benchmarks/torch_step.py --arch resnet18 --batch-size 128 --precisions float32,bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent / "torch_bridge"))
from authors_loop import PreActResNet18, pgd, resnet18_stages, stage_widths  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR ResNet-18 (3x3 stem, no max-pool), as sglr_keras.models builds it."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        widths = stage_widths(width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        self.blocks = resnet18_stages(BasicBlock, widths)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        return self.linear(self.blocks(self.stem(x)).mean(dim=(2, 3)))


ARCHS = {"resnet18": ResNet18, "preact_resnet18": PreActResNet18}


def at_step(model, optimizer, x, y, eps, step_size, steps, generator, autocast):
    model.eval()
    with autocast():
        x_adv = pgd(model, x, y, eps, step_size, steps, generator)
    model.train()
    optimizer.zero_grad()
    with autocast():
        loss = F.cross_entropy(model(x_adv), y)
    loss.backward()
    optimizer.step()


# wall: what a user waits; cpu: this process's CPU seconds, which another
# process's load on the machine hardly changes (compare at equal thread counts).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def warm_step(arch, shape, num_classes, batch_size, attack_steps, precision, layout):
    """One seeded PGD-AT step on a fixed batch, as a function of no arguments,
    already run twice (oneDNN picks and caches its kernels)."""
    torch.manual_seed(0)
    model = ARCHS[arch](shape[-1], num_classes, 1.0)
    x = torch.rand(batch_size, shape[-1], shape[0], shape[1])
    y = torch.arange(batch_size) % num_classes
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")

    def step():
        at_step(model, optimizer, x, y, 8 / 255, 2 / 255, attack_steps, generator, autocast)

    for _ in range(2):
        step()
    return step


def time_setting(arch, shape, num_classes, batch_size, attack_steps, precision, layout, steps, repeats,
                 clock=time.perf_counter):
    step = warm_step(arch, shape, num_classes, batch_size, attack_steps, precision, layout)
    samples = []
    for _ in range(repeats):
        start = clock()
        for _ in range(steps):
            step()
        samples.append(batch_size * steps / (clock() - start))
    return {"images_per_second": statistics.median(samples), "images_per_second_each_repeat": samples}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18", choices=sorted(ARCHS))
    parser.add_argument("--input-shape", default="32,32,3")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: images per second; cpu: images per CPU-second of this process")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's choice)")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--layouts", default="nchw,channels_last")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(d) for d in args.input_shape.split(","))
    results = {}
    for precision in args.precisions.split(","):
        for layout in args.layouts.split(","):
            results[f"{precision}/{layout}"] = time_setting(args.arch, shape, args.num_classes, args.batch_size,
                                                            args.attack_steps, precision, layout, args.steps,
                                                            args.repeats, CLOCKS[args.clock])
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "clock": args.clock,
                      "results": results}))


if __name__ == "__main__":
    main()
