"""A run folder's life cycle: claim and lock it, decide between a fresh start,
a resume, an extension and a refusal, create it, read its state and config.
The file names and readers live in :mod:`sglr_keras.runs.folder`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not locked
    fcntl = None

from sglr_keras.config import TrainConfig, config_from_dict
from sglr_keras.errors import RunFolderBusy, UserError
from sglr_keras.io import atomic_write_text
from sglr_keras.runs.folder import RunFolder, read_record

# Extending a finished run (more epochs) is a resume, not a different experiment,
# as long as the learning-rate drops stay where they were (see check_run_dir);
# XLA is how the same step is compiled, not what it computes.
RESUMABLE_DIFFERENCES = {"epochs", "jit_compile"}


def _config_differences(old: dict, new: dict, prefix: str = "", defaults: dict | None = None) -> list[str]:
    """Dotted keys whose values differ; a key that an older version did not write
    counts as unchanged while the new value is its default."""
    defaults = TrainConfig().to_dict() if defaults is None else defaults
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _config_differences(a, b, f"{prefix}{key}.", default if isinstance(default, dict) else {})
        elif key not in old and b == default:
            continue
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def check_run_dir(run_dir: Path, config: TrainConfig, overwrite: bool) -> dict | None:
    """The state of a run to resume in ``run_dir`` (None for a fresh start).
    Refuses a folder holding a run with another config unless ``overwrite``, and
    an extension (more epochs) that would move the learning-rate drops. Writes nothing."""
    config_path = RunFolder(run_dir).config
    if not config_path.is_file() or overwrite:
        return None
    old = read_record(config_path, "pass --overwrite to start this run again",
                      lambda record: isinstance(record.get("epochs"), int))
    differences = [k for k in _config_differences(old, config.to_dict()) if k not in RESUMABLE_DIFFERENCES]
    if differences:
        raise UserError(
            f"--out '{run_dir}' holds a run with a different config ({', '.join(differences[:3])} differ); "
            "choose another --out, or pass --overwrite to replace it"
        )
    if old.get("epochs") != config.epochs:
        old_drops = config.optimizer.milestone_epochs(old["epochs"])
        new_drops = config.optimizer.milestone_epochs(config.epochs)
        if old_drops != new_drops:
            raise UserError(
                f"extending '{run_dir}' from {old['epochs']} to {config.epochs} epochs would move the lr drops "
                f"from epochs {old_drops} to {new_drops}; give optimizer.lr_milestones in epochs "
                f"({old_drops}) to keep them, or train into a new --out")
    state = read_state(run_dir)
    folder = RunFolder(run_dir)
    if state is None and any(folder.checkpoint(n).exists() for n in ("best", "last")):
        # Its state/ was deleted (or never written): starting over would overwrite
        # the finished checkpoints and history with a new run's.
        raise UserError(f"'{run_dir}' holds checkpoints but no {folder.state.relative_to(run_dir)}, so the run "
                        "cannot resume; pass --overwrite to train it again from epoch 1 (replacing its checkpoints "
                        "and history), or choose another --out")
    return state


class RunFolderLock:
    """One training process per run folder: two writing the same checkpoints and
    history would leave files from both. An exclusive ``flock`` on the folder
    itself, released when the process ends, however it ends."""

    def __init__(self):
        self._fd = None
        # Whether this process made the folder (it then removes it if it stays empty).
        self.created = False

    def claim(self, path: Path) -> None:
        """Make ``path`` (if new) and lock it at once, before anything is read or
        written: of two runs started together on one new folder, one trains and
        the other is refused."""
        try:
            fresh = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot write to --out '{path}' ({err.strerror}); choose a writable folder")
        self.acquire(path)
        self.created = fresh  # only once the lock is ours

    def acquire(self, path: Path) -> None:
        if self._fd is not None or fcntl is None:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderBusy(f"'{path}' is being written by another sglr process; wait for it to finish "
                            "(it resumes from the same folder), or choose another --out")
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def create_run_dir(run_dir: Path, config: TrainConfig, overwrite: bool, lock: RunFolderLock) -> None:
    """Make the run folder, hold its lock, and write its config; with
    ``overwrite``, first remove the artefacts of the run that was there."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(run_dir)
        if overwrite:
            for target in RunFolder(run_dir).artefacts:
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        atomic_write_text(RunFolder(run_dir).config, json.dumps(config.to_dict(), indent=2))
    except OSError as err:
        raise UserError(f"cannot write to --out '{run_dir}' ({err.strerror}); choose a writable folder")


def read_state(run_dir: Path) -> dict | None:
    """The last completed epoch and best-so-far of a run, or None for a fresh one."""
    return read_record(RunFolder(run_dir).state, "pass --overwrite to start this run again",
                       lambda state: isinstance(state.get("epoch"), int) and state["epoch"] >= 0)


def load_run_config(run_dir: Path) -> TrainConfig:
    path = RunFolder(run_dir).config
    if not path.is_file():
        raise UserError(f"'{run_dir}' is not a run folder (no config.json); pass a folder written by sglr train")
    raw = read_record(path, "restore it, or pass --overwrite to sglr train to start the run again")
    try:
        return config_from_dict(raw)
    except UserError as err:
        raise UserError(f"'{path}' holds an invalid config ({err}); restore it, or start the run again")


def read_json(path: Path) -> dict:
    """A record whose loss is harmless (it is rewritten from the config): {} when absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
