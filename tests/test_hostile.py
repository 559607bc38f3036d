"""Hostile input, round two (issue 23): one table per class of defect. Each case
either works or ends in one line, a non-zero exit, no traceback, and no folder
or file left behind or changed. docs/reliability.md states the rules."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sglr_keras.checkpoints import card_summary, headline_candidates
from sglr_keras.config import TrainConfig, load_config
from sglr_keras.errors import UserError
from tests.conftest import run_cli, train_once

TINY = ("method: pgd-at\nepochs: 1\nbatch_size: 64\ndata: {dataset: synthetic}\n"
        "model: {arch: small_cnn, width: 0.25}\nattack: {eps: 8/255, step_size: 2/255, steps: 1}\n"
        "optimizer: {lr: 0.05}\nevaluation: {n_test: 32, n_train: 32, pgd_steps: 1, batch_size: 64}\n")


def _refused(result, *fragments):
    """One line naming the problem, exit 2, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output.replace("\n", " "), result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_once(tmp_path_factory, "hostile", TINY, "tiny.yaml")


# --- 1. the model card headlines the training threat model's evaluation --------

THREAT = {"norm": "Linf", "eps": 0.1, "dataset": "fashion_mnist", "data_dir": None, "selection_points": True}
GOOD = {"dataset": "fashion_mnist", "n_examples": 500, "eps": 0.1, "norm": "Linf", "steps": None, "step_size": None,
        "excluded_selection_points": 500}


@pytest.mark.parametrize("other, other_accuracy, why", [
    ({"eps": 0.001, "steps": 1}, 0.96, "another eps"),
    ({"excluded_selection_points": 0, "n_examples": 1000}, 0.889, "selection points included (biased)"),
    ({"dataset": "npz:/tmp/train-as-test.npz", "n_examples": 5000}, 0.99, "another data set"),
    ({"norm": "L2", "eps": 0.5, "n_examples": 1000}, 0.70, "another norm"),
    ({"data_dir": "/elsewhere", "n_examples": 1000}, 0.97, "another data folder"),
])
def test_the_card_headlines_only_the_training_threat_model(other, other_accuracy, why):
    entries = [{"attack": "pgd", "accuracy": 0.31, "settings": GOOD},
               {"attack": "pgd", "accuracy": other_accuracy, "settings": {**GOOD, **other}}]
    card = card_summary(entries, THREAT)
    assert card["pgd"]["robust_accuracy"] == 0.31, why
    assert card["pgd"]["eps"] == 0.1 and card["pgd"]["norm"] == "Linf" and card["pgd"]["n_examples"] == 500
    assert card_summary(entries[1:], THREAT) == {}, why


def test_the_card_prefers_the_default_budget_then_more_points_then_the_lower_number():
    weak = {**GOOD, "steps": 1, "n_examples": 1000}
    entries = [{"attack": "pgd", "accuracy": 0.40, "settings": weak},
               {"attack": "pgd", "accuracy": 0.31, "settings": GOOD},
               {"attack": "pgd", "accuracy": 0.30, "settings": {**GOOD, "n_examples": 100}}]
    assert card_summary(entries, THREAT)["pgd"]["robust_accuracy"] == 0.31
    assert len(headline_candidates(entries, THREAT)) == 3


def test_export_says_when_no_evaluation_matches(trained, tmp_path):
    checkpoint = trained / "run" / "last.keras"
    assert run_cli("eval", "--checkpoint", checkpoint, "--eps", "0.001", "--steps", "1", "--n-examples", 16).exit_code == 0
    result = run_cli("export", "--checkpoint", checkpoint, "--out", tmp_path / "models")
    assert result.exit_code == 0, result.output
    assert "no robustness numbers" in result.output and "matches its training threat model" in result.output
    card = json.loads(next((tmp_path / "models").rglob("model_card.json")).read_text())
    assert card["evaluation"] == {} and card["threat_model"]["norm"] == "Linf"


def test_l2_needs_its_own_eps_and_json_dash_is_stdout(trained):
    checkpoint = trained / "run" / "last.keras"
    _refused(run_cli("eval", "--checkpoint", checkpoint, "--norm", "L2"), "--norm L2 needs --eps")
    result = run_cli("eval", "--checkpoint", checkpoint, "--n-examples", 8, "--steps", 1, "--json", "-")
    assert result.exit_code == 0, result.output
    assert not Path("-").exists()
    start = result.stdout.index("{")
    assert json.loads(result.stdout[start:])["n_examples"] == 8


# --- 2. run-folder integrity --------------------------------------------------------

def _sglr(*args):
    return [str(Path(sys.executable).parent / "sglr"), *map(str, args)]


def test_two_runs_started_together_on_one_new_folder_do_not_mix(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(TINY)
    second.write_text(TINY.replace("seed", "seed").replace("epochs: 1", "epochs: 1\nseed: 7"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [subprocess.Popen(_sglr("train", "--config", config, "--out", tmp_path / "run"), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for config in (first, second)]
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _ in outcomes)
    assert codes[0] == 0, outcomes
    # The other was refused (busy, or a different config once the first had finished): never both written.
    assert codes[1] == 2 and ("another sglr process" in str(outcomes) or "different config" in str(outcomes))
    winner = first if outcomes[0][0] == 0 else second
    seed = yaml.safe_load(winner.read_text()).get("seed", 0)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == seed


def test_a_run_whose_state_was_deleted_is_not_restarted_over_its_checkpoints(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    shutil.rmtree(run / "state")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    _refused(run_cli("train", "--config", trained / "tiny.yaml", "--out", run), "no state/state.json", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


@pytest.mark.parametrize("name, content", [
    ("config.json", "{not json"), ("config.json", "[1, 2]"), ("state/state.json", "{\"epoch\": \"one\"}"),
    ("history.jsonl", "{\"epoch\": 1}\n{\"epo"), ("selection_points.json", "{\"test_indices\": \"all\"}"),
    ("run.json", "[]"),
])
@pytest.mark.parametrize("command", ["train", "eval", "report"])
def test_a_corrupt_record_is_refused_by_every_command_naming_the_file(trained, tmp_path, name, content, command):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    (run / name).write_text(content)
    args = {"train": ("train", "--config", trained / "tiny.yaml", "--out", run),
            "eval": ("eval", "--checkpoint", run / "best.keras", "--n-examples", 8, "--steps", 1),
            "report": ("report", run, "--out", tmp_path / "report")}[command]
    result = run_cli(*args)
    if result.exit_code == 0:
        # Only a command that does not read the file may succeed (e.g. report does not read state.json).
        assert (command, name) in {("report", "state/state.json"), ("report", "selection_points.json"),
                                   ("report", "run.json"), ("eval", "state/state.json"),
                                   ("eval", "history.jsonl"), ("train", "run.json"),
                                   ("train", "selection_points.json"),  # a finished run: nothing to do
                                   ("report", "config.json")}, result.output
        return
    _refused(result, name.split("/")[-1], "corrupt")


# --- 3. data sanity --------------------------------------------------------------------

def _npz(tmp_path, x_train=None, y_train=None):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.uniform(size=(40, 16, 16, 1)).astype(np.float32) if x_train is None else x_train,
             y_train=np.arange(40) % 4 if y_train is None else y_train,
             x_test=rng.uniform(size=(16, 16, 16, 1)).astype(np.float32) if x_train is None else x_train[:16],
             y_test=np.arange(16) % 4)
    return f"npz:{path}"


def _cifar10_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, handle)
    return tmp_path


@pytest.mark.parametrize("case", ["cifar100 from a cifar10 folder", "digits with --data-dir", "one class",
                                  "a stray label 255", "0x0 images", "images too small for the arch"])
def test_what_is_loaded_is_what_was_asked_and_can_train(tmp_path, case):
    out = tmp_path / "run"
    base = ("train", "--out", out, "--epochs", 1, "--set", "attack.steps=1", "--set", "evaluation.n_test=4")
    if case == "cifar100 from a cifar10 folder":
        result, expect = run_cli(*base, "--dataset", "cifar100", "--data-dir", _cifar10_folder(tmp_path)), "100 classes"
    elif case == "digits with --data-dir":
        result, expect = run_cli(*base, "--dataset", "digits", "--data-dir", tmp_path), "--data-dir is not used"
    elif case == "one class":
        result, expect = run_cli(*base, "--dataset", _npz(tmp_path, y_train=np.zeros(40, int))), "1 class"
    elif case == "a stray label 255":
        labels = np.arange(40) % 4
        labels[7] = 255
        result, expect = run_cli(*base, "--dataset", _npz(tmp_path, y_train=labels)), "only 5 of those 256"
    elif case == "0x0 images":
        result, expect = run_cli(*base, "--dataset", _npz(tmp_path, x_train=np.zeros((40, 0, 0, 1), np.float32))), "0x0"
    else:
        tiny = np.random.default_rng(0).uniform(size=(40, 2, 2, 1)).astype(np.float32)
        path = tmp_path / "small.npz"
        np.savez(path, x_train=tiny, y_train=np.arange(40) % 4, x_test=tiny[:16], y_test=np.arange(16) % 4)
        result, expect = run_cli(*base, "--dataset", f"npz:{path}", "--arch", "small_cnn"), "cannot take 2x2x1 images"
    _refused(result, expect)
    assert not out.exists()


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian's Fashion-MNIST not installed")
def test_mnist_asked_fashion_mnist_given_is_refused(tmp_path):
    result = run_cli("train", "--dataset", "mnist", "--data-dir", "/usr/share/datasets/fashion-mnist",
                     "--out", tmp_path / "run", "--epochs", 1)
    _refused(result, "looks like fashion_mnist, not mnist")
    assert not (tmp_path / "run").exists()


# --- 4. bounds, and values of every type in every key ----------------------------------

@pytest.mark.parametrize("assignment, fragment", [
    ("seed=4294967296", "allowed 0..4294967295"), ("epochs=1000000000", "allowed 1..100000"),
    ("batch_size=100000000000", "allowed 1..1048576"), ("optimizer.lr_milestones=[[1]]", "lr_milestones"),
    ("optimizer.lr_milestones=[300]", "after the last epoch"), ("attack.eps=[0.1]", "must be a number"),
    ("sglr.preset=[1]", "sglr.preset"), ("attack.steps=1000000", "allowed 0..100000"),
    # One budget rule for config and attacks: an eps the config takes, the per-epoch PGD takes too.
    ("attack.eps=0", "'attack.eps': 0.0 is out of range; allowed (0, 1]"),
    ("attack.step_size=0", "'attack.step_size': 0.0 is out of range"),
])
def test_bounds_are_one_line_refusals_before_anything_is_written(tmp_path, assignment, fragment):
    result = run_cli("train", "--method", "standard", "--out", tmp_path / "run", "--set", assignment)
    _refused(result, fragment)
    assert not (tmp_path / "run").exists()


def _dotted_keys(cls=TrainConfig, prefix=""):
    import dataclasses

    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(field.default_factory() if callable(field.default_factory) else None):
            yield from _dotted_keys(type(field.default_factory()), f"{prefix}{field.name}.")
        else:
            yield prefix + field.name


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=2),
    max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(_dotted_keys())), value=VALUES)
def test_any_value_in_any_key_is_accepted_or_refused_in_one_line(key, value):
    try:
        config = load_config(assignments=[f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
    except UserError as err:
        message = str(err)
        # One line that names what is wrong: the key, its section, or the key's own name (e.g. "unknown arch").
        assert "\n" not in message and any(part in message for part in (key, *key.split("."))), message
        return
    config.fingerprint()  # an accepted config is complete and serialisable


# --- 5. paths ---------------------------------------------------------------------------

def test_run_and_model_names_are_single_path_components(trained, tmp_path):
    experiment = tmp_path / "e.yaml"
    experiment.write_text("name: e\nbase: {epochs: 1}\nruns:\n  ../../escape: {method: pgd-at}\n")
    _refused(run_cli("reproduce", experiment, "--runs-dir", tmp_path / "runs"), "must be one plain name")
    listed = tmp_path / "l.yaml"
    listed.write_text("name: l\nbase: {epochs: 1}\nruns:\n  a: [1, 2]\n")
    _refused(run_cli("reproduce", listed, "--runs-dir", tmp_path / "runs"), "must be a mapping")
    _refused(run_cli("export", "--checkpoint", trained / "run" / "last.keras", "--out", tmp_path / "m",
                     "--name", "../../x"), "must be one plain name")
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()


# --- 6. no traceback for a user error ---------------------------------------------------

def test_bogus_tf_config_and_bad_cards_are_one_line(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    _refused(run_cli("train", "--out", tmp_path / "run", "--strategy", "multi-worker"), "TF_CONFIG is not valid JSON")
    monkeypatch.delenv("TF_CONFIG")
    bad = tmp_path / "card.json"
    bad.write_text("{oops")
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    result = run_cli("predict", image, "--server", "http://127.0.0.1:9", "--model", "m", "--card", bad)
    _refused(result, "card")


# --- 4b. a second Ctrl-C and SIGTERM end a long step at once ----------------------------

SLOW = ("method: pgd-at\nepochs: 3\nbatch_size: 64\ndata: {dataset: synthetic, train_subset: 64}\n"
        "model: {arch: small_cnn, width: 0.25}\nattack: {eps: 8/255, step_size: 2/255, steps: 3000}\n"
        "optimizer: {lr: 0.05}\nevaluation: {n_test: 16, n_train: 0, pgd_steps: 1, batch_size: 64}\n")


def test_a_second_ctrl_c_and_sigterm_end_a_long_attack_step_within_seconds(tmp_path):
    config = tmp_path / "slow.yaml"
    config.write_text(SLOW)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    state = tmp_path / "run" / "state" / "state.json"
    process = subprocess.Popen(_sglr("train", "--config", config, "--out", tmp_path / "run"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not state.is_file() and time.time() < deadline:
        time.sleep(0.2)
    assert state.is_file(), "the first epoch did not finish"
    time.sleep(1.0)  # inside epoch 2's (long) step
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    sent = time.time()
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=60)
    assert time.time() - sent < 10 and code == 130, process.stderr.read()
    assert json.loads(state.read_text())["epoch"] >= 1

    resumed = subprocess.Popen(_sglr("train", "--config", config, "--out", tmp_path / "run"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # The header ends with the legend; the first step starts right after it. Waiting
    # for it, not for a fixed time, keeps the signal inside the step however fast
    # the machine starts Python.
    stderr = _lines_of(resumed.stderr)
    deadline = time.time() + 120
    while not any(line.startswith("legend:") for line in stderr) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # inside epoch 2's (long) step
    sent = time.time()
    resumed.send_signal(signal.SIGTERM)
    code = resumed.wait(timeout=60)
    assert time.time() - sent < 10 and code == 143, "".join(stderr)
    assert json.loads(state.read_text())["epoch"] >= 1


def _lines_of(stream) -> list:
    """A list that a background thread fills with ``stream``'s lines as they come."""
    import threading

    lines = []

    def read():
        for line in iter(stream.readline, ""):
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _multi_worker(tmp_path, timeout, **popen):
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]},
                 "task": {"type": "worker", "index": 0}}
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "SGLR_CLUSTER_TIMEOUT": str(timeout),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(_sglr("train", "--strategy", "multi-worker", "--epochs", 1, "--out", tmp_path / "run"),
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)
    return process, tf_config["cluster"]["worker"][1]


def test_a_cluster_that_does_not_form_fails_naming_the_missing_worker(tmp_path):
    process, missing = _multi_worker(tmp_path, timeout=4)
    started = time.time()
    code = process.wait(timeout=120)
    stderr = process.stderr.read()
    assert code != 0 and time.time() - started < 60
    assert f"did not form within 4 s: worker 1 at {missing}" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run").exists()



def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


def test_ctrl_c_ends_the_wait_for_a_cluster_that_does_not_form(tmp_path):
    # Ctrl-C at a terminal signals the whole foreground process group.
    process, _ = _multi_worker(tmp_path, timeout=120, start_new_session=True)
    deadline = time.time() + 120
    while not _children(process.pid) and time.time() < deadline:  # the watchdog starts with the wait
        time.sleep(0.2)
    time.sleep(3)  # inside TensorFlow's wait for the cluster
    sent = time.time()
    os.killpg(process.pid, signal.SIGINT)
    code = process.wait(timeout=60)
    stderr = process.stderr.read()
    assert time.time() - sent < 10 and code != 0, stderr
    assert "Ctrl-C: stopped while waiting for the multi-worker cluster to form" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "run").exists()


# --- 7. work that will obviously take long is announced before it starts -----------------

@pytest.mark.parametrize("attacks, steps, points, at_least", [
    (["pgd"], 100_000, 10_000, 1e9),          # the case: steps times points implies hours
    (["autoattack"], None, 10_000, 3.5e7),     # AutoAttack: APGD-CE, APGD-T, FAB-T, Square 5000
    (["square"], None, 1_000, 1.6e6),         # queries are forward passes only
    (["fgsm"], None, 1_000, 2e3),
])
def test_evaluation_cost_counts_every_step_of_every_attack(attacks, steps, points, at_least):
    from sglr_keras.estimate import evaluation_passes

    passes = evaluation_passes(attacks, points, steps)
    assert at_least <= passes <= 2 * at_least


def test_training_cost_grows_with_epochs_examples_and_attack_steps():
    from sglr_keras.estimate import training_passes

    config = load_config(None, {"epochs": 200, "attack.steps": 10})
    base = training_passes(config, 50_000, 500, 200)
    assert base >= 200 * 50_000 * 11
    assert training_passes(config, 50_000, 500, 100) == pytest.approx(base / 2)
    assert training_passes(load_config(None, {"attack.steps": 20}), 50_000, 500, 200) > base


@pytest.mark.parametrize("command", ["train", "eval"])
def test_long_work_is_announced_with_its_estimate_before_it_starts(trained, tmp_path, monkeypatch, command):
    # Any positive threshold below the real cost: the tiny run then counts as long.
    monkeypatch.setenv("SGLR_LONG_WORK_SECONDS", "1e-9")
    if command == "train":
        result = run_cli("train", "--config", trained / "tiny.yaml", "--out", tmp_path / "run")
    else:
        result = run_cli("eval", "--checkpoint", trained / "run" / "last.keras", "--n-examples", 16)
    assert result.exit_code == 0, result.output
    note = next(line for line in result.output.splitlines() if line.startswith("note:") and "may take" in line)
    assert "forward-backward passes" in note and "images/s measured" in note
    monkeypatch.setenv("SGLR_LONG_WORK_SECONDS", "3600")
    quiet = run_cli("eval", "--checkpoint", trained / "run" / "last.keras", "--n-examples", 16)
    assert quiet.exit_code == 0 and "may take" not in quiet.output


def test_eval_and_reproduce_refuse_a_corrupt_selection_record_alike(tmp_path):
    experiment = tmp_path / "e.yaml"
    experiment.write_text("name: e\nbase:\n" + "".join(f"  {line}\n" for line in TINY.splitlines()) +
                          "runs:\n  a: {}\nfinal_evaluation: {n_examples: 8, attacks: [pgd], batch_size: 64}\n")
    assert run_cli("reproduce", experiment, "--runs-dir", tmp_path / "runs").exit_code == 0
    record = tmp_path / "runs" / "a" / "selection_points.json"
    record.write_text('{"test_indices": [1, "x"]}')
    by_eval = run_cli("eval", "--checkpoint", tmp_path / "runs" / "a" / "best.keras", "--n-examples", 8)
    by_reproduce = run_cli("reproduce", experiment, "--runs-dir", tmp_path / "runs")
    _refused(by_eval, "selection_points.json' is corrupt")
    _refused(by_reproduce, "selection_points.json' is corrupt")
    line = lambda result: next(x for x in result.output.splitlines() if x.startswith("error:"))  # noqa: E731
    assert line(by_eval) == line(by_reproduce)


def test_report_into_an_unwritable_folder_is_one_line(trained, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the folder should go: unwritable even for root
    _refused(run_cli("report", trained / "run", "--out", blocker / "report"), "cannot write the report")


def test_an_export_without_or_with_a_corrupt_card_is_one_line_in_predict_and_eval(trained, tmp_path):
    assert run_cli("export", "--checkpoint", trained / "run" / "last.keras", "--out", tmp_path / "m").exit_code == 0
    export = tmp_path / "m" / "sglr" / "1"
    card = export / "assets.extra" / "model_card.json"
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    card.write_text("{cut")
    _refused(run_cli("predict", image, "--saved-model", export), "model card", "not a JSON object")
    _refused(run_cli("eval", "--checkpoint", export, "--n-examples", 4), "model card", "not a JSON object")
    card.unlink()
    _refused(run_cli("predict", image, "--saved-model", export), "no input_shape")
    _refused(run_cli("eval", "--checkpoint", export, "--n-examples", 4), "--dataset")
