"""Experiments that compare training methods under one budget (``sglr reproduce``).

An experiment file (``configs/repro/*.yaml``) names a base training config and
the runs to make from it::

    name: fashion_mnist
    base: {epochs: 60, data: {dataset: fashion_mnist, train_subset: 1000}, ...}
    # or base: ../cifar10_resnet18.yaml (relative to this file)
    runs:
      pgd-at: {method: pgd-at}
      sglr-paper: {method: sglr, sglr: {preset: paper}}
    final_evaluation: {n_examples: 1000, attacks: [pgd, cw, autoattack]}

Every run trains into ``RUNS_DIR/NAME`` (an interrupted experiment resumes where
it stopped: finished runs are skipped, a partial one resumes), then its best and
last checkpoints are attacked on test points disjoint from the ones that picked
the best checkpoint. The results go to ``results.json``, ``results.md`` and the
report plots.
"""

from sglr_keras.reproduce.experiment import (CHECKPOINTS, Experiment, FinalEvaluation, load_experiment,
                                             select_runs)
from sglr_keras.reproduce.final import evaluate_checkpoint, final_attacks, final_evaluation_path
from sglr_keras.reproduce.report import markdown, paired_differences, run_result, seed_statistics, write_report
from sglr_keras.reproduce.runner import reproduce

__all__ = ["CHECKPOINTS", "Experiment", "FinalEvaluation", "load_experiment", "select_runs", "evaluate_checkpoint",
           "final_attacks", "final_evaluation_path", "markdown", "paired_differences", "run_result", "seed_statistics",
           "write_report", "reproduce"]
