"""The public API, used as a Keras user would: their own model (not from
sglr_keras.models), their own numpy arrays or tf.data pipeline."""

import doctest
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import sglr_keras as sk

N, C, SHAPE = 64, 4, (8, 8, 1)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(N) % C
    # Class-dependent brightness, so a tiny model can learn something.
    x = np.clip(rng.normal(0.2 + 0.2 * y[:, None, None, None], 0.1, (N, *SHAPE)), 0, 1).astype("float32")
    return x, y


def _sequential():
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(C)])


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.out = keras.layers.Dense(C)

    def call(self, x, training=False):
        return self.out(self.hidden(self.flatten(x)))


def _trainer(model, y, warmup=1, seed=0):
    return sk.AdversarialTrainer(model, attack=sk.TrainingPGD(eps=0.05, step_size=0.02, steps=2),
                                 objective=sk.SGLR.from_preset("reference-code", C, y, warmup_epochs=warmup),
                                 weight_decay=5e-4, seed=seed)


def _compile(trainer):
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return trainer


def test_every_public_name_resolves_has_an_example_and_is_documented():
    documented = Path(__file__).resolve().parents[1].joinpath("docs", "api.md").read_text()
    for name in sk.__all__:
        value = getattr(sk, name)
        assert value.__doc__ and ">>>" in value.__doc__, f"{name} has no docstring example"
        assert re.search(rf"`{name}[`(]", documented), f"{name} is not in docs/api.md"
    with pytest.raises(AttributeError):
        sk.not_a_name  # noqa: B018


@pytest.mark.parametrize("name", sk.__all__)
def test_docstring_examples_run(name):
    value = getattr(sk, name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    import sys

    module_globals = vars(sys.modules[value.__module__])
    for test in doctest.DocTestFinder(recurse=False).find(value, name, globs=dict(module_globals)):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_a_sequential_model_trains_with_sglr_from_numpy_and_the_table_refines_after_warmup():
    x, y = _data()
    model = _sequential()
    trainer = _compile(_trainer(model, y, warmup=1))
    trainer.fit(x, y, batch_size=16, epochs=1, verbose=0)
    np.testing.assert_array_equal(trainer.soft_label_table.numpy_rows(), np.eye(C)[y])  # warm-up: untouched
    trainer.fit(x, y, batch_size=16, epochs=2, initial_epoch=1, verbose=0)
    rows = trainer.soft_label_table.numpy_rows()
    assert np.all(rows.max(axis=1) < 1.0)  # every example refined once its batch ran
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-5)
    assert isinstance(trainer.classifier, keras.Sequential)


def test_a_subclassed_model_trains_with_sglr_from_tf_data():
    x, y = _data()
    dataset = sk.with_example_ids(tf.data.Dataset.from_tensor_slices((x, y)))
    dataset = dataset.shuffle(N, seed=0).map(lambda image, label, i: (tf.image.flip_left_right(image), label, i))
    trainer = _compile(_trainer(Subclassed(), y, warmup=0))
    history = trainer.fit(dataset.batch(16), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert np.all(trainer.soft_label_table.numpy_rows().max(axis=1) < 1.0)


def test_ids_must_be_attached_before_shuffling_or_batching():
    x, y = _data()
    plain = tf.data.Dataset.from_tensor_slices((x, y))
    for unstable in (plain.shuffle(8), plain.batch(4), plain.shuffle(8).map(lambda a, b: (a, b))):
        with pytest.raises(ValueError, match="attach ids to the unshuffled, unbatched"):
            sk.with_example_ids(unstable)
    assert [int(i) for _, _, i in sk.with_example_ids(plain.map(lambda a, b: (a * 2, b))).take(3)] == [0, 1, 2]


def test_a_table_objective_refuses_batches_without_ids_and_pgd_at_takes_them():
    x, y = _data()
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(ValueError, match="with_example_ids"):
        _compile(_trainer(_sequential(), y)).fit(pairs, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="table has 64 rows but fit got 32"):
        _compile(_trainer(_sequential(), y)).fit(x[:32], y[:32], epochs=1, verbose=0)
    plain = sk.AdversarialTrainer(_sequential(), objective=sk.PGDAT(C))
    plain.compile(optimizer="sgd")
    assert len(plain.fit(pairs, epochs=1, verbose=0).history["loss"]) == 1


class _StopAt(keras.callbacks.Callback):
    """Simulates a crash at the start of an epoch (after the previous one was backed up)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("crash")


def _fresh(y):
    keras.utils.set_random_seed(0)
    return _compile(_trainer(_sequential(), y, warmup=1))


def test_backup_and_restore_resumes_an_sglr_run_exactly(tmp_path):
    x, y = _data()
    whole = _fresh(y)
    whole.fit(x, y, batch_size=16, epochs=3, verbose=0)

    crashed = _fresh(y)
    backup = lambda: keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))  # noqa: E731
    with pytest.raises(RuntimeError, match="crash"):
        crashed.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[backup(), _StopAt(2)])
    resumed = _fresh(y)
    history = resumed.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[backup()])
    assert len(history.history["loss"]) == 1  # only epoch 3 ran
    np.testing.assert_array_equal(resumed.soft_label_table.numpy_rows(), whole.soft_label_table.numpy_rows())
    for a, b in zip(resumed.classifier.get_weights(), whole.classifier.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_robust_validation_feeds_early_stopping_and_checkpoints(tmp_path):
    x, y = _data()
    trainer = _compile(_trainer(_sequential(), y))
    stop = keras.callbacks.EarlyStopping(monitor="val_robust_acc", mode="max", patience=0)
    log = keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))
    best = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_robust_acc", mode="max",
                                           save_best_only=True)
    trainer.fit(x, y, batch_size=16, epochs=2, verbose=0,
                callbacks=[sk.RobustValidation(x[:16], y[:16], sk.PGD(eps=0.05, step_size=0.02, steps=3)), stop, log,
                           best])
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert {"val_clean_acc", "val_robust_acc"} <= set(header)
    # ModelCheckpoint keeps the plain classifier, loadable without this library.
    saved = keras.saving.load_model(tmp_path / "best.keras")
    assert isinstance(saved, keras.Sequential) and saved.output_shape == (None, C)


def test_attacks_are_callable_on_any_classifier():
    x, y = _data()
    model = Subclassed()
    model(x[:1])
    for attack in (sk.PGD(eps=0.05, steps=3), sk.CW(eps=0.05, steps=3), sk.FGSM(0.05), sk.APGD(eps=0.05, n_iter=5),
                   sk.Square(eps=0.05, n_queries=10)):
        x_adv = np.asarray(attack(model, x[:8], y[:8]))
        assert np.abs(x_adv - x[:8]).max() <= 0.05 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_evaluate_returns_a_frozen_typed_report():
    x, y = _data()
    model = _sequential()
    report = sk.evaluate(model, x, y, attacks=["pgd", "cw"], eps=0.05)
    assert isinstance(report, sk.EvaluationReport)
    assert report.robust_accuracy("pgd") <= report.clean_accuracy
    assert dict(report.attacks[0].settings) == {"norm": "Linf", "eps": 0.05, "steps": 20, "step_size": 0.0125,
                                                "restarts": 1}
    assert json.loads(report.to_json())["robust_accuracy"]["cw"] == report.robust_accuracy("cw")
    with pytest.raises(Exception):
        report.clean_accuracy = 1.0
    with pytest.raises(KeyError, match="it has pgd, cw"):
        report.robust_accuracy("autoattack")
    with pytest.raises(ValueError, match="images"):
        sk.evaluate(model, x[:, :, :, 0], y)


def test_an_evaluation_report_survives_its_json_and_reports_attack_objects_with_their_settings():
    import json

    import keras
    import numpy as np

    from sglr_keras import PGD, EvaluationReport, evaluate

    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(12, 4, 4, 1)).astype("float32"), np.arange(12) % 3
    report = evaluate(model, x, y, attacks=["pgd", PGD(eps=0.05, step_size=0.01, steps=3)], eps=0.05)
    assert [a.name for a in report.attacks] == ["pgd", "pgd#1"]
    assert dict(report.attacks[1].settings)["steps"] == 3 and dict(report.attacks[0].settings)["steps"] == 20
    assert report.worst_case_robust_accuracy <= min(a.robust_accuracy for a in report.attacks)
    again = EvaluationReport.from_dict(json.loads(report.to_json()))
    assert again.to_dict() == report.to_dict() and again.table() == report.table()
