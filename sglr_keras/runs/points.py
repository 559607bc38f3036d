"""Which test points pick a run's best epoch, and which are left for the final
attacks: one rule, here, for sglr train, sglr eval and sglr reproduce."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sglr_keras.config import TrainConfig
from sglr_keras.errors import UserError
from sglr_keras.runs.folder import RunFolder


def selection_size(n_test: int, test_size: int) -> int:
    """How many test points pick the best epoch: ``evaluation.n_test``, but at most
    half the test set, so that ``sglr eval`` and ``reproduce`` always have points
    the selection has not seen (on scikit-learn's digits, 359 test points, the
    default 1000 would otherwise take every one of them)."""
    return min(n_test, test_size // 2)


def selection_points(config: TrainConfig, bundle) -> dict:
    """The points of the per-epoch evaluation: the test points pick the best epoch,
    so final attacks must avoid them (``reproduce`` reads this record)."""
    evaluation = config.evaluation
    n_test = selection_size(evaluation.n_test, len(bundle.y_test))
    return {"seed": config.seed, "test_indices": bundle.test_indices(n_test, config.seed).tolist(),
            "train_indices": bundle.train_indices(evaluation.n_train, config.seed).tolist()}


def final_test_indices(bundle, run_dir: Path, selection: dict | None, n_examples: int, seed: int):
    """The final attacks' points: ``n_examples`` seeded test points outside the
    ones the run recorded as picking its best epoch (``selection``, its
    ``selection_points.json``)."""
    if selection is None:
        name = RunFolder(run_dir).selection_points.name
        raise UserError(f"'{run_dir}' has no {name}, so the points that picked the best "
                        "epoch are unknown; rerun the same sglr train command in that folder to write it")
    return held_out_indices(bundle, selection["test_indices"], n_examples, seed)


def held_out_indices(bundle, selection_indices, n_examples: int, seed: int):
    """``n_examples`` seeded test points outside ``selection_indices`` (the points
    that picked a best epoch): the one rule behind sglr eval and the final attacks."""
    return bundle.test_indices(n_examples, seed, exclude=list(selection_indices or []))


def points_digest(values: list[int]) -> str:
    """A short fingerprint of a list of test indices, as the final-evaluation records carry it."""
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]
