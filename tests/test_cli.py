"""The command line as a user runs it: a tiny training run, its evaluation, and
the error paths (one line, exit code 2, no traceback, nothing overwritten)."""

import json

import keras
import pytest
from tests.conftest import run_cli, train_once




@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return train_once(tmp_path_factory, "run", (
        "method: sglr\nepochs: 2\nbatch_size: 64\ndata: {dataset: synthetic}\n"
        "model: {arch: small_cnn, width: 0.5}\nattack: {eps: 8/255, step_size: 2/255, steps: 2}\n"
        "optimizer: {lr: 0.05}\nsglr: {warmup_epochs: 1}\n"
        "evaluation: {n_test: 64, n_train: 64, pgd_steps: 2, batch_size: 64}\n"), "config.yaml") / "run"


def test_train_writes_history_checkpoints_and_summary(trained_run):
    history = [json.loads(line) for line in (trained_run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    for key in ("loss", "test_clean_acc", "test_robust_acc", "train_robust_acc", "grad_norm",
                "test_ece", "table_entropy", "lr", "robust_gap"):
        assert key in history[-1]
    assert history[0]["table_entropy"] == pytest.approx(0.0, abs=1e-6)  # warm-up epoch: one-hot rows
    assert history[1]["table_entropy"] > 0.0
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["best_epoch"] in (1, 2)
    header = (trained_run / "history.csv").read_text().splitlines()[0]
    assert "test_robust_acc" in header
    model = keras.saving.load_model(trained_run / "best.keras", safe_mode=True)
    assert model.output_shape == (None, 10)


def test_rerunning_a_finished_run_does_nothing(trained_run):
    before = (trained_run / "history.jsonl").read_text()
    result = run_cli("train", "--config", trained_run.parent / "config.yaml", "--out", trained_run)
    assert result.exit_code == 0
    assert (trained_run / "history.jsonl").read_text() == before


def test_eval_reports_clean_and_robust_accuracy(trained_run, tmp_path):
    out = tmp_path / "eval.json"
    result = run_cli("eval", "--checkpoint", trained_run / "best.keras", "--attack", "all",
                  "--n-examples", 64, "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["dataset"] == "synthetic"  # taken from the run folder
    assert set(report["robust_accuracy"]) == {"fgsm", "pgd", "cw", "autoattack"}
    assert {c["check"] for c in report["diagnostics"]} == {  # deterministic_outputs: issue 16
        "deterministic_outputs", "pgd_vs_autoattack_spread", "black_box_finds_more", "accuracy_at_large_eps"}
    for value in report["robust_accuracy"].values():
        assert value <= report["clean_accuracy"]
    assert report["worst_case_robust_accuracy"] <= min(report["robust_accuracy"].values())


def test_eval_accepts_a_plain_keras_model(tmp_path):
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(inputs))
    path = tmp_path / "plain.keras"
    keras.Model(inputs, outputs).save(path)
    result = run_cli("eval", "--checkpoint", path, "--dataset", "synthetic", "--attack", "pgd", "--n-examples", 32)
    assert result.exit_code == 0, result.output


def _assert_user_error(result, message):
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--arch", "vgg"], "unknown arch 'vgg'"),
    (["--method", "magic"], "unknown value 'magic'"),
    (["--eps", "2"], "'attack.eps': 2.0 is out of range"),
    (["--label-noise", "1.5"], "'data.label_noise'"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "does not exist"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
])
def test_train_refuses_bad_input(tmp_path, args, message):
    _assert_user_error(run_cli("train", *args, "--out", tmp_path / "x"), message)
    assert not (tmp_path / "x" / "history.jsonl").exists()


def test_train_refuses_a_different_config_on_an_existing_run(trained_run):
    before = (trained_run / "config.json").read_text()
    result = run_cli("train", "--config", trained_run.parent / "config.yaml", "--method", "pgd-at",
                  "--out", trained_run)
    _assert_user_error(result, "holds a run with a different config")
    assert (trained_run / "config.json").read_text() == before


def test_eval_refuses_a_checkpoint_from_another_dataset(trained_run):
    result = run_cli("eval", "--checkpoint", trained_run / "best.keras", "--dataset", "digits")
    _assert_user_error(result, "takes images of shape (16, 16, 3) but 'digits' has (8, 8, 1)")


def test_eval_refuses_a_corrupt_checkpoint(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip file")
    _assert_user_error(run_cli("eval", "--checkpoint", path, "--dataset", "digits"), "is corrupt")


def test_eval_refuses_a_class_count_mismatch(tmp_path):
    inputs = keras.Input((8, 8, 1))
    path = tmp_path / "three.keras"
    keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs))).save(path)
    _assert_user_error(run_cli("eval", "--checkpoint", path, "--dataset", "digits"), "predicts 3 classes")


def test_cli_entry_point_has_help():
    result = run_cli("--help")
    assert result.exit_code == 0 and "train" in result.output and "eval" in result.output


def test_help_and_flag_errors_do_not_import_tensorflow():
    import subprocess
    import sys

    script = ("import sys\nfrom click.testing import CliRunner\nfrom sglr_keras.cli.main import with_commands\n"
              "group = with_commands()\n"
              "assert CliRunner().invoke(group, ['--help']).exit_code == 0\n"
              "assert CliRunner().invoke(group, ['train', '--help']).exit_code == 0\n"
              "assert CliRunner().invoke(group, ['eval', '--bogus']).exit_code == 2\n"
              "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported'\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_set_reaches_keys_without_a_flag(tmp_path):
    from sglr_keras.config import load_config

    config = load_config(None, {"epochs": 3}, ["model.width=0.5", "data.augment=false", "attack.eps=8/255",
                                               "optimizer.lr_milestones=[2, 3]", "data.train_subset=null"])
    assert config.model.width == 0.5 and config.data.augment is False and config.epochs == 3
    assert config.attack.eps == pytest.approx(8 / 255) and config.optimizer.lr_milestones == (2.0, 3.0)
