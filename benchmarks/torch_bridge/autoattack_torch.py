"""AutoAttack from torchattacks (PyTorch) on classifiers exported by `export_graph.py`:
robust accuracy, per-point results and points per second, as JSON.

torch and torchattacks are benchmark dependencies only (`pip install -e ".[bench]"`
or `pip install torch torchattacks`); this file never imports TensorFlow, so it
runs where only PyTorch is.

Two suites:
- ``standard``: the Croce & Hein (2020) standard ensemble built from torchattacks'
  own attacks with the original budgets: APGD-CE (100 iterations), APGD-T (9 target
  classes, 100 iterations), FAB-T (9 target classes, 100 iterations), Square (5000
  queries), each run on the points the previous ones left robust.
- ``torchattacks-default``: ``torchattacks.AutoAttack(version="standard")`` as it
  ships (3.5.1), which leaves APGD, APGD-T and FAB at their 10-iteration defaults.

    python benchmarks/torch_bridge/autoattack_torch.py a.npz b.npz --eps 0.1 --out aa.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay import check, load  # noqa: E402

SUITES = ("standard", "torchattacks-default")


def build_suite(name: str, model, eps: float, n_classes: int, seed: int):
    import torchattacks

    if name == "torchattacks-default":
        return [("autoattack", torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                                       n_classes=n_classes, seed=seed))]
    return [
        ("apgd-ce", torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=seed)),
        ("apgd-t", torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=n_classes,
                                      seed=seed)),
        ("fab-t", torchattacks.FAB(model, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                                   n_classes=n_classes, seed=seed)),
        ("square", torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, seed=seed)),
    ]


def _predict(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def run_suite(model, x: torch.Tensor, y: torch.Tensor, suite, batch_size: int, eps: float) -> dict:
    """Each attack on the points still robust, in batches; per-stage robust accuracy and seconds."""
    robust = _predict(model, x, batch_size) == y
    clean = float(robust.float().mean())
    stages, start = [], time.perf_counter()
    for name, attack in suite:
        began = time.perf_counter()
        todo = torch.nonzero(robust).flatten()
        for i in range(0, len(todo), batch_size):
            index = todo[i:i + batch_size]
            adv = attack(x[index], y[index])
            if (adv - x[index]).abs().max() > eps + 1e-5 or adv.min() < 0 or adv.max() > 1:
                raise RuntimeError(f"{name} left the eps-ball or [0, 1]")
            robust[index] = _predict(model, adv, batch_size) == y[index]
        if x.is_cuda:
            torch.cuda.synchronize()
        stages.append({"attack": name, "seconds": time.perf_counter() - began, "attacked": int(len(todo)),
                       "robust_accuracy": float(robust.float().mean())})
    seconds = time.perf_counter() - start
    return {"clean_accuracy": clean, "robust_accuracy": float(robust.float().mean()), "seconds": seconds,
            "points_per_second": len(x) / seconds, "stages": stages,
            "robust": robust.cpu().numpy().astype(int).tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help=".npz files from export_graph.py with stored points")
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--suite", choices=SUITES, default="standard")
    parser.add_argument("--n-examples", type=int, help="the first N stored points (default: all)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the JSON here")
    args = parser.parse_args()

    import torchattacks

    # Full float32 on GPUs too (PyTorch lets cuDNN convolutions use TF32 by default),
    # so the replay matches the Keras logits and the attack sees the same function.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(args.device)
    report = {"machine": {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor()
                          or platform.machine(), "torch": torch.__version__, "torchattacks": torchattacks.__version__,
                          "threads": torch.get_num_threads()},
              "suite": args.suite, "eps": args.eps, "models": {}}
    for path in args.models:
        model, points = load(path)
        model = model.to(device)
        worst = check(model, points, device=device)
        if worst > 1e-3:
            raise SystemExit(f"{path}: the replay's logits differ from Keras's by {worst:.2e}; not attacking it")
        n = args.n_examples or len(points["y"])
        x = torch.from_numpy(points["x"][:n]).to(device)
        y = torch.from_numpy(points["y"][:n]).to(device)
        torch.manual_seed(args.seed)
        suite = build_suite(args.suite, model, args.eps, int(points["logits"].shape[1]), args.seed)
        result = run_suite(model, x, y, suite, args.batch_size, args.eps)
        result.update(n_examples=n, max_logit_difference=worst)
        if "indices" in points:
            result["test_indices"] = points["indices"][:n].tolist()
        report["models"][Path(path).stem] = result
        print(f"{Path(path).stem}: clean {100 * result['clean_accuracy']:.1f}  AA {100 * result['robust_accuracy']:.1f}"
              f"  {result['points_per_second']:.2f} points/s  (max |logit diff| {worst:.1e})", flush=True)
        if args.out:  # after every model, so a run cut short keeps what it finished
            Path(args.out).write_text(json.dumps(report, indent=2))
    if not args.out:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
