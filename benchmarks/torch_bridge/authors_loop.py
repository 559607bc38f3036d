"""The SGLR authors' training loop in PyTorch, on the data a run folder trained on.

Written from the authors' public code (repository SGLS: ``losses/loss.py``'s AT
and SGLS criteria, ``main_adv.py``'s epoch loop and schedule) and described in
docs/method.md: per batch, PGD from a uniform start with the network in eval
mode; the adversarial forward in train mode; for SGLS from epoch ``es`` on (epochs
count from 1), a clean forward in train mode, the table row updated as
``alpha * row + (1 - alpha) * (0.2 * p_clean + 0.8 * p_adv)`` and the soft cross
entropy against the updated row; plain cross entropy before. SGD with coupled
weight decay, lr multiplied by gamma from each milestone epoch on (the schedule is
stepped with the epoch number at the start of each epoch). The network is a
PreAct ResNet-18 with PyTorch's default initialisation and ``padding=1``.

Evaluation matches our run's: clean accuracy and PGD-10 (the run's eps and
step, random start, counted on clean-correct points) on the selection points at
the epochs our run evaluated, and PGD-20 (step eps/4) on the final points at the
best (by selection PGD-10) and the last epoch. Needs numpy and torch only:

    python benchmarks/torch_bridge/authors_loop.py data/pgd-at.npz --loss at --seed 0 --out curves/at-0.jsonl
    python benchmarks/torch_bridge/authors_loop.py data/pgd-at.npz --loss sgls --es 5 --seed 0 --out curves/sgls-0.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Conv2d(in_channels, channels, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        shortcut = self.shortcut(pre) if self.shortcut is not None else x
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def stage_widths(width: float) -> list[int]:
    """Channels ``round(64 * width) * 2**stage``, as sglr_keras.models builds them."""
    return [max(1, int(round(64 * 2**stage * width))) for stage in range(4)]


def resnet18_stages(block, widths: list[int]) -> nn.Sequential:
    """Two blocks per stage; the first of stages 2-4 halves the resolution."""
    blocks, previous = [], widths[0]
    for stage, channels in enumerate(widths):
        for i in range(2):
            blocks.append(block(previous, channels, 2 if (i == 0 and stage > 0) else 1))
            previous = channels
    return nn.Sequential(*blocks)


class PreActResNet18(nn.Module):
    """Channels ``round(64 * width) * 2**stage``, as sglr_keras.models builds it."""

    def __init__(self, in_channels: int, num_classes: int, width: float):
        super().__init__()
        widths = stage_widths(width)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, padding=1, bias=False)
        self.blocks = resnet18_stages(PreActBlock, widths)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.linear(out.mean(dim=(2, 3)))


def pgd(model, x, y, eps, step_size, steps, generator):
    """L-inf PGD from a uniform start, as the authors' criteria and test write it."""
    start = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    x_adv = torch.clamp(x + start, 0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        grad, = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0, 1)
    return x_adv.detach()


def robust_accuracy(model, x, y, eps, step_size, steps, generator, batch_size=250):
    """Clean and robust accuracy (robust: correct on the clean point and after PGD)."""
    model.eval()
    clean = robust = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with torch.no_grad():
            correct = model(xb).argmax(1) == yb
        x_adv = pgd(model, xb, yb, eps, step_size, steps, generator)
        with torch.no_grad():
            survived = (model(x_adv).argmax(1) == yb) & correct
        clean += int(correct.sum())
        robust += int(survived.sum())
    return clean / len(y), robust / len(y)


def _tensor_images(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255.0


def train(data: dict, loss_name: str, es: int, seed: int, alpha: float = 0.9, log=print) -> list[dict]:
    config = data["config"]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x_train, y_train = _tensor_images(data["x_train"]), torch.from_numpy(data["y_train"]).long()
    num_classes = int(max(data["y_train"].max(), data["y_select"].max())) + 1
    model = PreActResNet18(x_train.shape[1], num_classes, config["model"]["width"])
    opt = config["optimizer"]
    optimizer = torch.optim.SGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"],
                                weight_decay=opt["weight_decay"], nesterov=opt["nesterov"])
    eps, step_size, steps = config["attack"]["eps"], config["attack"]["step_size"], config["attack"]["steps"]
    soft_labels = F.one_hot(y_train, num_classes).float()
    evaluated = set(config["evaluated_epochs"])
    x_select, y_select = _tensor_images(data["x_select"]), torch.from_numpy(data["y_select"]).long()
    x_teval, y_teval = _tensor_images(data["x_train_eval"]), torch.from_numpy(data["y_train_eval"]).long()
    x_final, y_final = _tensor_images(data["x_final"]), torch.from_numpy(data["y_final"]).long()
    batch_size = config["batch_size"]
    history, best, states = [], {"epoch": None, "test_robust_acc": -1.0}, {}
    for epoch in range(1, config["epochs"] + 1):
        lr = opt["lr"] * opt["lr_gamma"] ** sum(epoch >= m for m in config["milestone_epochs"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        order = torch.randperm(len(y_train), generator=generator)
        loss_sum = correct_sum = 0.0
        for i in range(0, len(order), batch_size):
            index = order[i:i + batch_size]
            x, y = x_train[index], y_train[index]
            model.eval()
            x_adv = pgd(model, x, y, eps, step_size, steps, generator)
            model.train()
            optimizer.zero_grad()
            logits = model(x_adv)
            if loss_name == "at" or epoch < es:
                loss = F.cross_entropy(logits, y)
            else:
                p_adv = F.softmax(logits.detach(), dim=1)
                p_clean = F.softmax(model(x).detach(), dim=1)
                soft_labels[index] = alpha * soft_labels[index] + (1 - alpha) * (0.2 * p_clean + 0.8 * p_adv)
                loss = torch.sum(-F.log_softmax(logits, dim=1) * soft_labels[index], dim=1).mean()
            loss.backward()
            optimizer.step()
            loss_sum += float(loss) * len(y)
            correct_sum += float((logits.argmax(1) == y).sum())
        record = {"epoch": epoch, "lr": lr, "loss": loss_sum / len(y_train), "acc": correct_sum / len(y_train),
                  "train_seconds": time.perf_counter() - started}
        if epoch in evaluated:
            record["test_clean_acc"], record["test_robust_acc"] = robust_accuracy(
                model, x_select, y_select, eps, step_size, config["evaluation"]["pgd_steps"], generator)
            record["train_clean_acc"], record["train_robust_acc"] = robust_accuracy(
                model, x_teval, y_teval, eps, step_size, config["evaluation"]["pgd_steps"], generator)
            if record["test_robust_acc"] > best["test_robust_acc"]:
                best = {"epoch": epoch, "test_robust_acc": record["test_robust_acc"]}
                states["best"] = {k: v.clone() for k, v in model.state_dict().items()}
        if loss_name == "sgls":
            probs = soft_labels.clamp_min(1e-12)
            record["table_entropy"] = float(-(probs * probs.log()).sum(1).mean())
        history.append(record)
        log(json.dumps(record))
    final = {}
    # Copies: loading the best state writes into the tensors model.state_dict() returns.
    states["last"] = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("best", "last"):
        state = states[name]
        model.load_state_dict(state)
        final[name] = dict(zip(("clean_acc", "pgd20_acc"), robust_accuracy(
            model, x_final, y_final, eps, eps / 4, 20, torch.Generator().manual_seed(0))))
    # last_state_copied: earlier versions attacked the best state twice (last == best).
    history.append({"final": final, "best_epoch": best["epoch"], "last_state_copied": True})
    return history


def load(path: str) -> dict:
    with np.load(path) as stored:
        data = {key: stored[key] for key in stored.files if key != "__config__"}
        data["config"] = json.loads(str(stored["__config__"]))
    return data


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="an .npz from export_run_data.py")
    parser.add_argument("--loss", choices=("at", "sgls"), required=True)
    parser.add_argument("--es", type=int, default=90, help="SGLS: first epoch (1-based) with the table active")
    parser.add_argument("--alpha", type=float, default=0.9, help="SGLS: the table's EMA momentum")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="a .jsonl: one line per epoch, then the final attacks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.out, "w") as out:
        def log(line):
            out.write(line + "\n")
            out.flush()
            print(line, flush=True)

        header = {"loss": args.loss, "es": args.es, "alpha": args.alpha, "seed": args.seed, "data": args.data}
        log(json.dumps({"run": header}))
        history = train(load(args.data), args.loss, args.es, args.seed, args.alpha, log=lambda line: log(line))
        log(json.dumps(history[-1]))


if __name__ == "__main__":
    main()
