"""The layout of a run folder, in one place.

``sglr train --out DIR`` writes::

    config.json             the resolved config
    run.json                data set and model facts (class names, label-noise fraction, ...)
    selection_points.json   the test and train indices of the per-epoch evaluation
    history.csv / .jsonl    one record per epoch
    best.keras, last.keras  plain Keras classifiers
    *.keras.eval.json       evaluation records tied to a checkpoint's content hash
    state/                  trainer weights (optimizer, soft-label table) and state.json
    summary.json            written when the run ends
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sglr_keras.errors import UserError

CHECKPOINT_NAMES = ("best", "last")


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def facts(self) -> Path:
        return self.path / "run.json"

    @property
    def selection_points(self) -> Path:
        return self.path / "selection_points.json"

    @property
    def history_jsonl(self) -> Path:
        return self.path / "history.jsonl"

    @property
    def history_csv(self) -> Path:
        return self.path / "history.csv"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    @property
    def state(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def trainer_weights(self) -> Path:
        return self.state_dir / "trainer.weights.h5"

    def checkpoint(self, name: str) -> Path:
        """``best`` or ``last``: the ``.keras`` classifier."""
        return self.path / f"{name}.keras"

    @property
    def artefacts(self) -> tuple[Path, ...]:
        """Everything a run writes (what ``--overwrite`` removes)."""
        checkpoints = [self.checkpoint(n) for n in CHECKPOINT_NAMES]
        records = [record(c) for c in checkpoints for record in (evaluation_record_path, final_record_path)]
        return (self.config, self.facts, self.selection_points, self.history_csv, self.history_jsonl,
                *checkpoints, *records, self.summary, self.state_dir)


def evaluation_record_path(checkpoint) -> Path:
    """What ``sglr eval`` measured on a checkpoint, beside it (also outside run folders)."""
    return Path(str(checkpoint) + ".eval.json")


def final_record_path(checkpoint) -> Path:
    """The cached final attacks of ``sglr reproduce`` on a checkpoint, beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".final.json")


def read_record(path: Path, fix: str, valid=lambda record: True) -> dict | None:
    """A JSON record of a run folder, None when absent; a corrupt one (not JSON,
    not a mapping, or failing ``valid``) is refused in one line with ``fix``."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or not valid(record):
        raise UserError(f"'{path}' is corrupt; {fix}")
    return record


def read_selection_points(run_dir) -> dict | None:
    """The test points that picked a run's best epoch (``selection_points.json``),
    or None; every command reads them here and refuses a corrupt file alike."""
    def valid(record):
        indices = record.get("test_indices")
        return isinstance(indices, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in indices)

    return read_record(RunFolder(run_dir).selection_points, "rerun the same sglr train command to rewrite it", valid)
