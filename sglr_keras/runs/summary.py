"""What a run folder says about its run: the facts of the run (``run.json``)
and the summary of its history (``summary.json``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no TensorFlow import for readers of run folders
    from sglr_keras.config import TrainConfig
    from sglr_keras.data import DatasetBundle

def summarize(history: list[dict]) -> dict:
    """Best (by test robust accuracy) and last epoch, and the robust-overfitting gap."""
    if not history:
        return {}
    best = max(history, key=lambda r: r.get("test_robust_acc", -1.0))
    last = history[-1]
    summary = {
        "epochs": last["epoch"],
        "best_epoch": best["epoch"],
        "best_test_robust_acc": best.get("test_robust_acc"),
        "best_test_clean_acc": best.get("test_clean_acc"),
        "last_test_robust_acc": last.get("test_robust_acc"),
        "last_test_clean_acc": last.get("test_clean_acc"),
        "last_train_robust_acc": last.get("train_robust_acc"),
        "last_test_ece": last.get("test_ece"),
        "train_seconds": sum(r.get("train_seconds", 0.0) for r in history),
    }
    if best.get("test_robust_acc") is not None and last.get("test_robust_acc") is not None:
        summary["best_minus_last_robust_acc"] = best["test_robust_acc"] - last["test_robust_acc"]
    return summary


def run_facts(config: TrainConfig, bundle: DatasetBundle, extended_from: list[int] | None = None) -> dict:
    facts = {"dataset": bundle.name, "class_names": bundle.class_names, "num_classes": bundle.num_classes,
             "input_shape": list(bundle.input_shape), "num_train": bundle.num_train,
             "arch": config.model.arch, "init": config.model.init, "padding": config.model.padding,
             "method": config.method,
             "label_noise": {"rate": config.data.label_noise, "mode": config.data.label_noise_mode,
                             "wrong_label_fraction": bundle.wrong_label_fraction},
             "lr_drop_epochs": config.optimizer.milestone_epochs(config.epochs)}
    if extended_from:
        facts["extended_from_epochs"] = extended_from
    return facts
