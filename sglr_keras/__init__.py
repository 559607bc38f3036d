"""sglr-keras: adversarial training with Self-Guided Label Refinement in Keras 3.

The public API, for your own Keras classifier (any model mapping images in
[0, 1] to logits) and your own data::

    import keras
    import sglr_keras as sk

    trainer = sk.AdversarialTrainer(model, attack=sk.TrainingPGD(eps=8 / 255, step_size=2 / 255, steps=10),
                                    objective=sk.SGLR(10, y_train, warmup_epochs=4), weight_decay=5e-4)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    trainer.fit(x_train, y_train, batch_size=128, epochs=30)
    report = sk.evaluate(model, x_test, y_test, attacks=["pgd", "autoattack"], eps=8 / 255)
    print(report.table())

Every name below is listed with an example in docs/api.md. Names load on first
use, so ``import sglr_keras`` (and the CLI's config checks) stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # training
    "AdversarialTrainer": "sglr_keras.training.trainer",
    "PGDAT": "sglr_keras.training.objectives",
    "SGLR": "sglr_keras.training.objectives",
    "TRADES": "sglr_keras.training.objectives",
    "TRADESSGLR": "sglr_keras.training.objectives",
    "LabelSmoothing": "sglr_keras.training.objectives",
    "TrainingPGD": "sglr_keras.attacks.training",
    "TradesKL": "sglr_keras.attacks.training",
    "RobustValidation": "sglr_keras.training.callbacks",
    "with_example_ids": "sglr_keras.data.example_ids",
    # attacks: attack(model, x, y) -> x_adv
    "PGD": "sglr_keras.attacks.pgd",
    "CW": "sglr_keras.attacks.pgd",
    "FGSM": "sglr_keras.attacks.fgsm",
    "APGD": "sglr_keras.attacks.apgd",
    "FAB": "sglr_keras.attacks.fab",
    "Square": "sglr_keras.attacks.square",
    "AutoAttack": "sglr_keras.attacks.autoattack",
    # evaluation and export
    "evaluate": "sglr_keras.evaluation",
    "EvaluationReport": "sglr_keras.evaluation_report",
    "export_saved_model": "sglr_keras.export.savedmodel",
    # conveniences: our architectures and data sets
    "build_model": "sglr_keras.models",
    "use_fused_batch_norm": "sglr_keras.models.fused_batchnorm",
    "folded_batch_norm": "sglr_keras.models.fused_batchnorm",
    "load_dataset": "sglr_keras.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sglr_keras' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
