"""The built-in architectures by name, without importing Keras (config checks
use this and stay fast); ``sglr_keras.models`` builds them."""

from __future__ import annotations

from sglr_keras.errors import UserError

ARCHITECTURE_NAMES = ("resnet18", "resnet34", "resnet50", "preact_resnet18", "wrn34_10", "wrn28_10", "small_cnn")


def canonical_arch_name(name: str) -> str:
    return name.lower().replace("-", "_")


def validate_arch_name(name: str) -> None:
    if not isinstance(name, str) or canonical_arch_name(name) not in ARCHITECTURE_NAMES:
        raise UserError(f"unknown arch '{name}'; choose one of {', '.join(ARCHITECTURE_NAMES)}")
