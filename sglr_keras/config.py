"""Training configuration: YAML files map to typed dataclasses, validated once.

A config file mirrors the dataclass tree::

    method: sglr
    epochs: 200
    data: {dataset: cifar10, train_subset: null}
    model: {arch: resnet18}
    attack: {eps: 8/255, step_size: 2/255, steps: 10}
    sglr: {preset: reference-code}

Numbers may be written as fractions (``8/255``). Every value is checked when the
config is loaded; a bad one raises :class:`UserError` naming the key, the value
and what is allowed. Code below the CLI only ever sees these objects.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from sglr_keras.errors import UserError

METHODS = ("standard", "pgd-at", "sglr", "trades", "trades-sglr", "label-smoothing")
SGLR_METHODS = ("sglr", "trades-sglr")
STRATEGIES = ("auto", "default", "mirrored", "multi-worker")
TABLE_DTYPES = ("float32", "float16")
# Keras mixed-precision policies; logits, losses and the soft-label table stay float32.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
LABEL_NOISE_MODES = ("flip", "redraw")
# How a built-in network is initialised and padded: as PyTorch does, or as Keras does.
MODEL_BUILDS = ("torch", "keras")
# Bounds that keep a typo from hanging or exhausting the machine (seeds are
# 32-bit for numpy and TensorFlow; a batch of 2^20 images is already far beyond memory).
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 2**20
MAX_STEPS = 100_000
# What a run folder's config.json written before a key existed was trained with.
LEGACY_DEFAULTS = {"model": {"init": "keras", "padding": "keras"}}

# Named SGLR settings. "reference-code" is what the authors' public PyTorch code
# runs (see docs/method.md): r = 1, so the loss uses the EMA row directly.
# "paper" is the formulation in the paper's text: r = 0.2 mixes the row with
# the hard label.
SGLR_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "r": 0.2,
        "alpha": 0.9,
        "lam": 0.2,
        "temperature": 1.0,
        "warmup_epochs": 0,
        "clean_forward_training": True,
    },
    "reference-code": {
        "r": 1.0,
        "alpha": 0.9,
        "lam": 0.2,
        "temperature": 1.0,
        # The reference's --sgls-es 90 with epochs counted from 1: hard labels for
        # epochs 1-89, the table active from epoch 90.
        "warmup_epochs": 89,
        "clean_forward_training": True,
    },
}


def _fraction(value: Any, key: str) -> Any:
    """Accept ``8/255`` style strings for float fields."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", value)
        try:
            if match:
                return float(match.group(1)) / float(match.group(2))
            return float(value)
        except (ValueError, ZeroDivisionError):
            raise UserError(f"config key '{key}': {value!r} is not a number; write e.g. 0.03 or 8/255")
    return value


@dataclass(frozen=True)
class DataConfig:
    """``label_noise_mode``: ``flip`` gives exactly round(rate * N) examples another
    class; ``redraw`` (the SGLR reference code's convention) redraws int(rate * N)
    labels uniformly from all C classes, so about 1/C of them stay correct."""

    dataset: str = "digits"
    data_dir: str | None = None
    train_subset: int | None = None
    augment: bool | None = None  # None: crop+flip for natural images, crop only for digits/clothes
    label_noise: float = 0.0
    label_noise_mode: str = "flip"

    def validate(self) -> None:
        from sglr_keras.data import validate_dataset_name

        validate_dataset_name(self.dataset)
        _check_range("data.label_noise", self.label_noise, 0.0, 1.0, hi_open=True)
        _check_choice("data.label_noise_mode", self.label_noise_mode, LABEL_NOISE_MODES)
        if self.train_subset is not None:
            _check_int("data.train_subset", self.train_subset, 1, 10**9)


@dataclass(frozen=True)
class ModelConfig:
    """``init`` and ``padding``: ``torch`` builds the network as its PyTorch twin
    (PyTorch's default weight initialisation, symmetric padding for strided
    convolutions), ``keras`` with Keras's defaults (he_normal / glorot, "same"
    padding); see docs/method.md, "Initialisation"."""

    arch: str = "small_cnn"
    width: float = 1.0
    sync_batchnorm: bool = False
    init: str = "torch"
    padding: str = "torch"

    def validate(self) -> None:
        from sglr_keras.architectures import validate_arch_name

        validate_arch_name(self.arch)
        _check_range("model.width", self.width, 0.0, 16.0, lo_open=True)
        _check_choice("model.init", self.init, MODEL_BUILDS)
        _check_choice("model.padding", self.padding, MODEL_BUILDS)


@dataclass(frozen=True)
class AttackConfig:
    """L-inf PGD used to make training examples (the inner maximisation)."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True

    def validate(self) -> None:
        from sglr_keras.attacks.budget import budget_problem

        # The attacks' own rule (the per-epoch evaluation attacks with this eps
        # whatever the method), so a config accepted here never fails later.
        problem = budget_problem(eps=self.eps, step_size=self.step_size)
        if problem:
            setting, what = problem
            raise UserError(f"config key 'attack.{setting}': {what}")
        _check_int("attack.steps", self.steps, 0, MAX_STEPS)


@dataclass(frozen=True)
class OptimizerConfig:
    """SGD as in the paper. Weight decay is the coupled L2 of PyTorch's SGD.

    ``lr_milestones`` are epochs (whole numbers) or fractions of the run in (0, 1):
    the default [0.5, 0.75] is the paper's x0.1 at epochs 100 and 150 of 200.
    Epochs count from 1, as in the reference code: milestone 100 means the lr is
    multiplied from the first step of epoch 100 on (99 epochs at the initial lr).
    """

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1

    def milestone_epochs(self, epochs: int) -> list[int]:
        return [round(m * epochs) if m < 1 else int(m) for m in self.lr_milestones]

    def validate(self) -> None:
        _check_range("optimizer.lr", self.lr, 0.0, 10.0, lo_open=True)
        _check_range("optimizer.momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _check_range("optimizer.weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("optimizer.lr_gamma", self.lr_gamma, 0.0, 1.0, lo_open=True)
        milestones = list(self.lr_milestones)
        if (any(isinstance(m, bool) or not isinstance(m, (int, float))
                                                    or m <= 0 or (m > 1 and m != int(m)) for m in milestones)
                or milestones != sorted(set(milestones))):
            raise UserError(
                f"config key 'optimizer.lr_milestones': {milestones!r} must be increasing epochs "
                "(e.g. [100, 150]) or fractions of the run (e.g. [0.5, 0.75])"
            )


@dataclass(frozen=True)
class SGLRConfig:
    """Self-Guided Label Refinement hyperparameters (docs/method.md).

    ``preset`` fills every value not given explicitly.
    """

    preset: str | None = None
    r: float = 0.2
    alpha: float = 0.9
    lam: float = 0.2
    temperature: float = 1.0
    warmup_epochs: int = 0
    clean_forward_training: bool = True
    table_dtype: str = "float32"

    def validate(self) -> None:
        for key in ("r", "alpha", "lam"):
            _check_range(f"sglr.{key}", getattr(self, key), 0.0, 1.0)
        _check_range("sglr.temperature", self.temperature, 0.0, 100.0, lo_open=True)
        _check_int("sglr.warmup_epochs", self.warmup_epochs, 0, MAX_EPOCHS)
        _check_choice("sglr.table_dtype", self.table_dtype, TABLE_DTYPES)
        if self.preset is not None:
            _check_choice("sglr.preset", self.preset, tuple(SGLR_PRESETS))


@dataclass(frozen=True)
class EvalConfig:
    """Per-epoch evaluation on fixed subsets (seeded, the same every epoch).

    ``every``: epochs between evaluations. The last epoch and the first epoch at
    each new learning rate are always evaluated; the best checkpoint is picked
    among evaluated epochs only."""

    n_test: int = 1000
    n_train: int = 1000
    pgd_steps: int = 10
    batch_size: int = 256
    every: int = 1

    def validate(self) -> None:
        _check_int("evaluation.every", self.every, 1, MAX_EPOCHS)
        _check_int("evaluation.n_test", self.n_test, 1, 10**8)
        _check_int("evaluation.n_train", self.n_train, 0, 10**8)
        _check_int("evaluation.pgd_steps", self.pgd_steps, 1, MAX_STEPS)
        _check_int("evaluation.batch_size", self.batch_size, 1, MAX_BATCH_SIZE)


@dataclass(frozen=True)
class TrainConfig:
    method: str = "pgd-at"
    epochs: int = 30
    batch_size: int = 128
    seed: int = 0
    trades_beta: float = 6.0
    label_smoothing: float = 0.1
    # None: XLA where the device benefits (GPU/TPU), off on CPU (where XLA does not
    # use oneDNN and the PGD step measured 4x slower).
    jit_compile: bool | None = None
    precision: str = "float32"
    strategy: str = "auto"
    cpu_replicas: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    sglr: SGLRConfig = field(default_factory=SGLRConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_int("epochs", self.epochs, 1, MAX_EPOCHS)
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_range("trades_beta", self.trades_beta, 0.0, 1000.0)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_int("cpu_replicas", self.cpu_replicas, 1, 256)
        for section in (self.data, self.model, self.attack, self.optimizer, self.sglr, self.evaluation):
            section.validate()
        beyond = [m for m in self.optimizer.milestone_epochs(self.epochs) if m > self.epochs]
        if beyond:
            raise UserError(f"config key 'optimizer.lr_milestones': epoch {beyond[0]} is after the last epoch "
                            f"({self.epochs}); give drops within the run, or fractions such as [0.5, 0.75]")
        if self.method in SGLR_METHODS and self.sglr.warmup_epochs >= self.epochs:
            raise UserError(
                f"config key 'sglr.warmup_epochs': {self.sglr.warmup_epochs} >= epochs ({self.epochs}), "
                "so label refinement would never start; lower the warm-up or train longer"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self) -> str:
        """A canonical JSON string of what decides the training trajectory."""
        return json.dumps(self.to_dict(), sort_keys=True)


def _check_range(key, value, lo, hi, lo_open=False, hi_open=False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"config key '{key}': {value!r} is not a number")
    if not math.isfinite(value):
        raise UserError(f"config key '{key}': {value} is not a finite number; give a value in range")
    below = value <= lo if lo_open else value < lo
    above = value >= hi if hi_open else value > hi
    if below or above:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise UserError(f"config key '{key}': {value} is out of range; allowed {interval}")


def _check_int(key, value, lo, hi=None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise UserError(f"config key '{key}': {value!r} must be a whole number >= {lo}")
    if hi is not None and value > hi:
        raise UserError(f"config key '{key}': {value} is out of range; allowed {lo}..{hi}")


def _check_choice(key, value, allowed) -> None:
    if value not in allowed:
        raise UserError(f"config key '{key}': unknown value {value!r}{did_you_mean(value, allowed)}; "
                        f"choose one of {', '.join(allowed)}")


def did_you_mean(value, allowed) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or nothing."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build_section(cls, raw: dict[str, Any], prefix: str = ""):
    """A config dataclass from a mapping, every key known and every value type-checked."""
    return _build(cls, raw, prefix)


def _build(cls, raw: dict[str, Any], prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys."""
    if not isinstance(raw, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(
            f"unknown config key '{prefix}{unknown[0]}'{did_you_mean(unknown[0], sorted(known))}; "
            f"allowed keys here: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, key + ".")
        else:
            kwargs[name] = _coerce(hint, value, key)
    return cls(**kwargs)


_TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _coerce(hint, value, key):
    """``value`` as the type ``hint`` names (bool, int, float, str, an optional of
    one of them, or a tuple of floats), or a UserError naming key, value and type."""
    origin = get_origin(hint)
    allowed = get_args(hint) if origin is not None and origin is not tuple else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise UserError(f"config key '{key}': a value is required ({_TYPE_NAMES.get(allowed[0], 'a list')})")
    kind = next(t for t in allowed if t is not type(None))
    if get_origin(kind) is tuple:
        (item,) = set(get_args(kind)) - {Ellipsis}
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': {value!r} must be a list, e.g. [0.5, 0.75]")
        return tuple(_coerce(item, v, key) for v in value)
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{key}': {value!r} must be true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{key}': {value!r} must be a string")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"config key '{key}': {value!r} must be {_TYPE_NAMES[kind]}")
    if kind is float:
        value = float(_fraction(value, key))
        if not math.isfinite(value):
            raise UserError(f"config key '{key}': {value} is not a finite number")
        return value
    # int
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise UserError(f"config key '{key}': {value!r} must be a whole number")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise UserError(f"config key '{key}': {value!r} must be a whole number")
    return value


def _apply_preset(raw: dict[str, Any]) -> dict[str, Any]:
    sglr = raw.get("sglr") or {}
    if not isinstance(sglr, dict):
        return raw  # _build refuses a section that is not a mapping
    preset = sglr.get("preset")
    if preset is None:
        return raw
    if not isinstance(preset, str) or preset not in SGLR_PRESETS:
        raise UserError(f"config key 'sglr.preset': unknown value {preset!r}; choose one of {', '.join(SGLR_PRESETS)}")
    return {**raw, "sglr": {**SGLR_PRESETS[preset], **sglr}}


def merge_raw(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` laid over ``base``, section by section."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_raw(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist; pass an existing YAML file to --config")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"config file '{path}' is not valid YAML ({where}{problem}); fix the syntax")
    if not isinstance(raw, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys to values")
    return raw


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"model.width": 0.5}`` as ``{"model": {"width": 0.5}}``. A name given both
    as a value and as a section is refused."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"config key '{key}': '{part}' is a value, not a section")
            node = child
        node[leaf] = value
    return nested


def parse_assignments(assignments: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["model.width=0.5", "data.augment=false"]`` as a nested mapping; values
    are read as YAML (numbers, true/false, null, lists, 8/255 stays a string)."""
    dotted: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {assignment!r} must look like section.key=value, e.g. model.width=0.5")
        try:
            dotted[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            dotted[key.strip()] = text
    return nest(dotted)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                assignments: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load a YAML config (or the defaults), apply ``--set`` assignments, then
    dotted-key overrides (CLI flags), validate.

    ``overrides`` maps dotted keys (``"data.dataset"``) to values; ``None`` values
    are ignored so that unset CLI flags keep the file's value.
    """
    raw = read_yaml(path) if path is not None else {}
    raw = merge_raw(raw, parse_assignments(assignments))
    flags = nest({key: value for key, value in (overrides or {}).items() if value is not None})
    return config_from_raw(merge_raw(raw, flags))


def config_from_raw(raw: dict[str, Any]) -> TrainConfig:
    """A validated config from a nested mapping as written in YAML (presets applied)."""
    config = _build(TrainConfig, _apply_preset(raw))
    config.validate()
    return config


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved by :meth:`TrainConfig.to_dict` (e.g. in a run folder).
    A key the file predates takes the value the run was trained with
    (``LEGACY_DEFAULTS``), not today's default."""
    if isinstance(raw, dict):
        raw = merge_raw(LEGACY_DEFAULTS, raw)
    config = _build(TrainConfig, raw)
    config.validate()
    return config
