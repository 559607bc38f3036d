"""Atomic file writes: write to a temporary name beside the target, then rename.

A kill at any moment leaves either the previous file or the new one, never a
half-written one. Keras picks the format from the suffix, so temporary names
keep it (``.best.tmp-<pid>.keras``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import keras


def write_atomically(path: Path, suffix: str, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)`` and rename the result onto ``path``."""
    path = Path(path)
    temporary = path.with_name(f".{path.name[: -len(suffix)]}.tmp-{os.getpid()}{suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def _write_text(text: str) -> Callable[[Path], None]:
    def write(temporary: Path) -> None:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return write


def atomic_write_text(path: Path, text: str) -> None:
    write_atomically(path, Path(path).suffix, _write_text(text))


def atomic_save_model(model: keras.Model, path: Path) -> None:
    write_atomically(path, ".keras", model.save)


def atomic_save_weights(model: keras.Model, path: Path) -> None:
    write_atomically(path, ".weights.h5", model.save_weights)

