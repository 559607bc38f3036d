"""Bad input and faults, as a new or hostile user meets them (issue 14): each case
is refused with one line naming the problem, a non-zero exit, no traceback, and
nothing written. The table is the catalogue in docs/reliability.md."""

import json
import pickle

import numpy as np
import pytest

from tests.conftest import run_cli, train_once

TINY = ("method: pgd-at\nepochs: 2\nbatch_size: 64\ndata: {dataset: synthetic}\n"
        "model: {arch: small_cnn, width: 0.5}\nattack: {eps: 8/255, step_size: 2/255, steps: 1}\n"
        "optimizer: {lr: 0.05}\nevaluation: {n_test: 32, n_train: 32, pgd_steps: 1, batch_size: 64}\n")


def _npz(tmp_path, **arrays):
    rng = np.random.default_rng(0)
    base = {"x_train": rng.uniform(size=(40, 8, 8, 1)).astype(np.float32), "y_train": np.arange(40) % 4,
            "x_test": rng.uniform(size=(16, 8, 8, 1)).astype(np.float32), "y_test": np.arange(16) % 4}
    base.update(arrays)
    base = {k: v for k, v in base.items() if v is not None}
    path = tmp_path / "data.npz"
    np.savez(path, **base)
    return f"npz:{path}"


def _cifar(tmp_path, batch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as handle:
            pickle.dump(batch if i == 1 else good, handle)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump(good, handle)
    return tmp_path


def _idx_short_header(tmp_path):
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5]) + bytes(5))
    return tmp_path


# (case, arguments after `sglr train --config C --out OUT`, expected words of the error)
TRAIN_CASES = [
    ("eps nan", ["--eps", "nan"], "attack.eps"),
    ("lr nan", ["--lr", "nan"], "optimizer.lr"),
    ("batch size 0", ["--batch-size", "0"], "batch_size"),
    ("label noise nan", ["--set", "data.label_noise=.nan"], "data.label_noise"),
    ("random_start 'no'", ["--set", "attack.random_start='no'"], "must be true or false"),
    ("dataset 10", ["--set", "data.dataset=10"], "must be a string"),
    ("misspelt key", ["--set", "model.widht=0.5"], "did you mean 'width'"),
    ("misspelt method", ["--method", "sglrr"], "did you mean 'sglr'"),
    ("bad --set", ["--set", "model.width"], "section.key=value"),
    ("steps negative", ["--set", "attack.steps=-5"], "attack.steps"),
    ("eval every 0", ["--set", "evaluation.every=0"], "evaluation.every"),
    ("unknown label noise mode", ["--set", "data.label_noise_mode=random"], "label_noise_mode"),
]


@pytest.mark.parametrize("case, args, words", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_bad_settings_before_writing(tmp_path, case, args, words):
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    result = run_cli("train", "--config", config, "--out", tmp_path / "run", *args)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


DATA_CASES = [
    ("x/y length mismatch", lambda p: _npz(p, y_train=np.arange(39) % 4), "40 train images but 39 labels"),
    ("NaN pixels", lambda p: _npz(p, x_test=np.full((16, 8, 8, 1), np.nan, np.float32)), "NaN"),
    ("float labels", lambda p: _npz(p, y_train=(np.arange(40) % 4).astype(np.float32)), "whole-number class ids"),
    ("string images", lambda p: _npz(p, x_train=np.full((40, 8, 8, 1), "a")), "dtype"),
    ("empty test split", lambda p: _npz(p, x_test=np.zeros((0, 8, 8, 1), np.float32),
                                        y_test=np.zeros(0, np.int64)), "test split is empty"),
    ("train/test shapes differ", lambda p: _npz(p, x_test=np.zeros((16, 6, 6, 1), np.float32)), "same image shape"),
    ("declared class count too small", lambda p: _npz(p, num_classes=np.array(2)), "num_classes"),
    ("CIFAR pickle is a list", lambda p: f"cifar10 --data-dir {_cifar(p, [1, 2, 3])}", "not a dictionary"),
    ("CIFAR pickle lacks labels", lambda p: f"cifar10 --data-dir {_cifar(p, {b'data': np.zeros((4, 3072))})}",
     "lacks labels"),
    ("idx header cut short", lambda p: f"fashion_mnist --data-dir {_idx_short_header(p)}", "truncated"),
]


@pytest.mark.parametrize("case, make, words", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_refused_before_a_run_folder_exists(tmp_path, case, make, words):
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    dataset, *rest = make(tmp_path).split(" ")
    result = run_cli("train", "--config", config, "--out", tmp_path / "run", "--dataset", dataset, *rest)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_an_npz_may_declare_more_classes_than_it_uses(tmp_path):
    from sglr_keras.data import load_dataset

    bundle = load_dataset(_npz(tmp_path, num_classes=np.array(10)))
    assert bundle.num_classes == 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_once(tmp_path_factory, "trained", TINY)


EVAL_CASES = [
    ("steps -5", ["--steps", "-5"], "--steps -5"),
    ("eps nan", ["--eps", "nan"], "--eps"),
    ("eps 0", ["--eps", "0"], "--eps"),
    ("step size nan", ["--step-size", "nan"], "--step-size"),
    ("batch size 0", ["--batch-size", "0"], "--batch-size"),
    ("json into a missing folder", ["--json", "/nonexistent/folder/out.json"], "does not exist"),
]


@pytest.mark.parametrize("case, args, words", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_eval_refuses_bad_options_before_attacking(trained, case, args, words):
    checkpoint = trained / "run" / "last.keras"
    record = checkpoint.with_name("last.keras.eval.json")
    record.unlink(missing_ok=True)
    result = run_cli("eval", "--checkpoint", checkpoint, "--n-examples", 16, *args)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not record.exists()  # nothing was evaluated


def test_predict_refuses_top_k_0(tmp_path):
    result = run_cli("predict", "x.png", "--saved-model", tmp_path, "--top-k", "0")
    assert result.exit_code == 2 and "--top-k" in result.output


def test_a_model_card_only_carries_numbers_of_the_exported_weights(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    run = tmp_path / "run"
    assert run_cli("train", "--config", config, "--out", run).exit_code == 0
    assert run_cli("eval", "--checkpoint", run / "last.keras", "--n-examples", 16).exit_code == 0
    # Retrain into the same folder: last.keras now holds other weights.
    result = run_cli("train", "--config", config, "--out", run, "--overwrite", "--seed", "5")
    assert result.exit_code == 0, result.output
    assert not (run / "last.keras.eval.json").exists()  # --overwrite removed the old record
    (run / "last.keras.eval.json").write_text(json.dumps({"checkpoint_sha256": "0" * 64, "entries": [
        {"attack": "autoattack", "accuracy": 0.983, "settings": {"n_examples": 1000}}]}))
    result = run_cli("export", "--checkpoint", run / "last.keras", "--out", tmp_path / "models")
    assert result.exit_code == 0, result.output
    assert "no robustness numbers" in result.output
    card = json.loads(next((tmp_path / "models").rglob("model_card.json")).read_text())
    assert card["evaluation"] == {} and card["evaluation_records"] == []


def test_a_weaker_evaluation_does_not_replace_a_stronger_one(trained):
    checkpoint = trained / "run" / "best.keras"
    assert run_cli("eval", "--checkpoint", checkpoint, "--n-examples", 32, "--steps", "10").exit_code == 0
    assert run_cli("eval", "--checkpoint", checkpoint, "--n-examples", 8, "--steps", "1").exit_code == 0
    from sglr_keras.checkpoints import model_card

    card = model_card(checkpoint)
    assert card["evaluation"]["pgd"]["n_examples"] == 32 and card["evaluation"]["pgd"]["steps"] == 10
    assert len([e for e in card["evaluation_records"] if e["attack"] == "pgd"]) == 2


def test_extending_a_run_refuses_to_move_fractional_lr_drops(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(TINY.replace("epochs: 2", "epochs: 4"))
    run = tmp_path / "run"
    assert run_cli("train", "--config", config, "--out", run).exit_code == 0
    result = run_cli("train", "--config", config, "--out", run, "--epochs", "8")
    assert result.exit_code == 2 and "would move the lr drops" in result.output
    assert json.loads((run / "config.json").read_text())["epochs"] == 4


def test_extending_a_run_with_lr_drops_in_epochs_records_the_change(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(TINY.replace("epochs: 2", "epochs: 2\n").replace("optimizer: {lr: 0.05}",
                                                                        "optimizer: {lr: 0.05, lr_milestones: [2]}"))
    run = tmp_path / "run"
    assert run_cli("train", "--config", config, "--out", run).exit_code == 0
    result = run_cli("train", "--config", config, "--out", run, "--epochs", "3")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
    assert json.loads((run / "run.json").read_text())["extended_from_epochs"] == [2]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_eval_on_best_keras_leaves_out_the_selection_points(trained):
    result = run_cli("eval", "--checkpoint", trained / "run" / "best.keras", "--n-examples", 16)
    assert result.exit_code == 0 and "leaving out the 32 test points" in result.output


def test_a_small_test_set_still_leaves_points_for_eval(tmp_path):
    # The README's quickstart: digits has 359 test points and the default n_test is
    # 1000; picking the best epoch on all of them left `sglr eval` with none (a crash).
    # Synthetic data has 256 test points.
    config = tmp_path / "c.yaml"
    config.write_text(TINY.replace("n_test: 32", "n_test: 1000").replace("epochs: 2", "epochs: 1"))
    result = run_cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "picked on 128 of the 256 test points" in result.output
    assert len(json.loads((tmp_path / "run" / "selection_points.json").read_text())["test_indices"]) == 128
    result = run_cli("eval", "--checkpoint", tmp_path / "run" / "best.keras", "--attack", "pgd")
    assert result.exit_code == 0, result.output
    assert "leaving out the 128 test points" in result.output and "128 test points" in result.output


def test_eval_says_so_when_every_test_point_picked_the_best_epoch(trained):
    record = trained / "run" / "selection_points.json"
    saved = record.read_text()
    record.write_text(json.dumps({**json.loads(saved), "test_indices": list(range(256))}))
    try:
        result = run_cli("eval", "--checkpoint", trained / "run" / "best.keras", "--attack", "pgd")
    finally:
        record.write_text(saved)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "all 256 test points of synthetic picked this run's best epoch" in result.output
    assert "--include-selection-points" in result.output


def test_a_yaml_error_names_its_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("method: pgd-at\nepochs: [3\nbatch_size: 4\n")
    result = run_cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "line 3" in result.output and "Traceback" not in result.output
