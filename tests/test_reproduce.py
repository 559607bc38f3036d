"""``sglr reproduce``: an experiment of two tiny runs trains, evaluates best and
last checkpoints on held-out test points, reports, and resumes without redoing work."""

import json

import pytest
import yaml

from sglr_keras.data import load_dataset
from sglr_keras.reproduce import load_experiment
from tests.conftest import run_cli

EXPERIMENT = {
    "name": "tiny",
    "description": "Two methods on synthetic data.",
    "base": {
        "epochs": 2, "batch_size": 64, "data": {"dataset": "synthetic"},
        "model": {"arch": "small_cnn", "width": 0.5},
        "attack": {"eps": "8/255", "step_size": "2/255", "steps": 2}, "optimizer": {"lr": 0.05},
        "evaluation": {"n_test": 64, "n_train": 32, "pgd_steps": 2, "batch_size": 64},
    },
    "runs": {"pgd-at": {"method": "pgd-at"},
             "sglr": {"method": "sglr", "sglr": {"preset": "paper", "warmup_epochs": 1}}},
    "final_evaluation": {"n_examples": 48, "attacks": ["pgd", "cw"], "batch_size": 48},
}



def _write(tmp_path, experiment):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    path = _write(root, EXPERIMENT)
    result = run_cli("reproduce", path, "--runs-dir", root / "runs", "--report-dir", root / "report")
    assert result.exit_code == 0, result.output
    return root, path


def test_every_run_trains_and_both_checkpoints_are_attacked(finished):
    root, _ = finished
    document = json.loads((root / "report" / "results.json").read_text())
    assert [r["run"] for r in document["runs"]] == ["pgd-at", "sglr"]
    for run in document["runs"]:
        assert run["epochs"] == 2
        for checkpoint in ("best", "last"):
            numbers = run["checkpoints"][checkpoint]
            assert numbers["n_examples"] == 48
            assert 0.0 <= numbers["cw"] <= numbers["clean"] and 0.0 <= numbers["pgd"] <= numbers["clean"]
        assert run["best_minus_last"]["pgd"] == pytest.approx(
            run["checkpoints"]["best"]["pgd"] - run["checkpoints"]["last"]["pgd"])
    assert document["runs"][1]["sglr"]["r"] == 0.2


def test_the_report_has_tables_plots_and_the_command(finished):
    root, _ = finished
    text = (root / "report" / "results.md").read_text()
    assert "| pgd-at |" in text and "| sglr |" in text
    assert "PGD-20 best" in text and "CW last" in text and "sglr reproduce" in text
    for plot in ("robust_accuracy.png", "gradient_norm.png", "generalisation_gap.png"):
        assert (root / "report" / "plots" / plot).stat().st_size > 0


def test_final_points_are_disjoint_from_the_model_selection_points():
    bundle = load_dataset("synthetic")
    x_sel, _ = bundle.test_subset(64, 0)
    x_final, _ = bundle.test_subset(48, 0, skip=64)
    selected = {row.tobytes() for row in x_sel}
    assert len(x_final) == 48 and not any(row.tobytes() in selected for row in x_final)


def test_rerunning_reuses_runs_and_cached_evaluations(finished):
    root, path = finished
    caches = sorted((root / "runs").glob("*/*.final.json"))
    assert len(caches) == 4
    before = {p: p.read_text() for p in caches}
    history = (root / "runs" / "sglr" / "history.jsonl").read_text()
    result = run_cli("reproduce", path, "--runs-dir", root / "runs", "--report-dir", root / "report")
    assert result.exit_code == 0, result.output
    assert {p: p.read_text() for p in caches} == before
    assert (root / "runs" / "sglr" / "history.jsonl").read_text() == history


def test_only_trains_the_named_run_and_reports_what_finished(tmp_path):
    experiment = {**EXPERIMENT, "base": {**EXPERIMENT["base"], "epochs": 1},
                  "runs": {"pgd-at": {"method": "pgd-at"}, "standard": {"method": "standard"}}}
    path = _write(tmp_path, experiment)
    result = run_cli("reproduce", path, "--runs-dir", tmp_path / "runs", "--only", "standard", "--no-eval")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "runs" / "pgd-at").exists()
    document = json.loads((tmp_path / "runs" / "report" / "results.json").read_text())
    assert [r["run"] for r in document["runs"]] == ["standard"]
    assert document["runs"][0]["checkpoints"] == {}


@pytest.mark.parametrize("change, message", [
    ({"runs": {"bad": {"method": "sgd"}}}, "run 'bad': config key 'method'"),
    ({"runs": {}}, "needs a 'runs' mapping"),
    ({"final_evaluation": {"attacks": ["pgd", "deepfool"]}}, "unknown attack 'deepfool'"),
    ({"final_evaluation": {"n_exampels": 10}}, "final_evaluation takes only"),
    ({"extra": 1}, "unknown key 'extra'"),
])
def test_bad_experiments_are_refused_before_any_training(tmp_path, change, message):
    path = _write(tmp_path, {**EXPERIMENT, **change})
    result = run_cli("reproduce", path, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_unknown_only_name_is_refused(tmp_path):
    result = run_cli("reproduce", _write(tmp_path, EXPERIMENT), "--only", "trades", "--runs-dir", tmp_path / "r")
    assert result.exit_code == 2 and "--only 'trades' is not a run" in result.output


def test_shipped_experiments_load():
    from pathlib import Path

    files = sorted(Path(__file__).parent.parent.joinpath("configs", "repro").glob("*.yaml"))
    assert files
    for path in files:
        experiment = load_experiment(path)
        assert experiment.runs


def test_autoattack_can_run_on_the_first_points_only(tmp_path):
    experiment = {**EXPERIMENT, "base": {**EXPERIMENT["base"], "epochs": 1}, "runs": {"pgd-at": {"method": "pgd-at"}},
                  "final_evaluation": {"n_examples": 32, "attacks": ["pgd", "autoattack"],
                                       "autoattack_examples": 8, "checkpoints": ["last"], "batch_size": 32}}
    result = run_cli("reproduce", _write(tmp_path, experiment), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    last = json.loads((tmp_path / "runs" / "report" / "results.json").read_text())["runs"][0]["checkpoints"]["last"]
    assert last["n_examples"] == 32 and last["autoattack_subset"]["n_examples"] == 8
    assert [s["attack"] for s in last["autoattack_stages"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert last["autoattack"] <= last["autoattack_subset"]["clean_accuracy"]
    text = (tmp_path / "runs" / "report" / "results.md").read_text()
    assert "ran on the first 8 of those points" in text and "| pgd-at | last | 8 |" in text


def test_report_only_writes_the_report_without_training(finished, tmp_path):
    root, path = finished
    result = run_cli("reproduce", path, "--runs-dir", root / "runs", "--report-dir", tmp_path / "report", "--report-only")
    assert result.exit_code == 0, result.output
    assert [r["run"] for r in json.loads((tmp_path / "report" / "results.json").read_text())["runs"]] == ["pgd-at", "sglr"]
    result = run_cli("reproduce", path, "--runs-dir", tmp_path / "elsewhere", "--report-only")
    assert result.exit_code == 2 and "no finished runs" in result.output
    assert not (tmp_path / "elsewhere").exists()


def test_seed_statistics_give_mean_and_sample_spread_per_method():
    from sglr_keras.reproduce import seed_statistics

    def run(name, best, last):
        return {"run": name, "curve": {"best_test_robust": best, "last_test_robust": last,
                                       "best_minus_last": best - last, "last_train_minus_test_robust": None},
                "checkpoints": {}}

    lines = seed_statistics([run("pgd-at", 0.60, 0.55), run("pgd-at-seed1", 0.62, 0.58),
                             run("pgd-at-seed2", 0.64, 0.58), run("trades", 0.5, 0.5)])
    row = next(line for line in lines if line.startswith("| pgd-at |"))
    # best 60, 62, 64 -> 62.0 +- 2.0; gap 5, 4, 6 -> 5.0 +- 1.0
    assert "| 3 | 62.0 +- 2.0 | 57.0 +- 1.7 | 5.0 +- 1.0 |" in row
    assert any(line.startswith("| trades | 1 | 50.0 |") for line in lines)


def test_paired_differences_match_seeds_and_mark_only_consistent_effects():
    from sglr_keras.reproduce import paired_differences

    def run(name, pgd_last, clean_last):
        return {"run": name, "curve": {"best_minus_last": 0.0, "last_train_minus_test_robust": 0.0},
                "checkpoints": {"last": {"pgd": pgd_last, "clean": clean_last}}}

    results = [run("pgd-at", 0.40, 0.70), run("pgd-at-seed1", 0.50, 0.70), run("pgd-at-seed2", 0.45, 0.70),
               run("sglr", 0.44, 0.71), run("sglr-seed1", 0.53, 0.69), run("sglr-seed2", 0.50, 0.70),
               run("trades", 0.60, 0.60)]  # one seed: no pairs to report
    lines = paired_differences(results)
    row = next(line for line in lines if line.startswith("| sglr |"))
    # PGD-20 last: +4, +3, +5 -> +4.0 +- 1.0, all positive and 4 > 1: beyond the spread.
    assert "**+4.0 +- 1.0** (n=3; +4.0, +3.0, +5.0)" in row
    # clean last: +1, -1, 0 -> mixed signs: reported, not marked.
    assert "+0.0 +- 1.0 (n=3; +1.0, -1.0, +0.0)" in row and "**+0.0" not in row
    assert not any(line.startswith("| trades |") for line in lines)


def test_a_run_another_process_is_training_is_skipped_and_the_rest_go_on(tmp_path):
    import fcntl
    import os

    experiment = {**EXPERIMENT, "base": {**EXPERIMENT["base"], "epochs": 1},
                  "runs": {"pgd-at": {"method": "pgd-at"}, "standard": {"method": "standard"}}}
    path = _write(tmp_path, experiment)
    busy = tmp_path / "runs" / "pgd-at"
    busy.mkdir(parents=True)
    holder = os.open(busy, os.O_RDONLY)  # as a second `sglr reproduce` on the same list would hold it
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        result = run_cli("reproduce", path, "--runs-dir", tmp_path / "runs", "--no-eval")
    finally:
        os.close(holder)
    assert result.exit_code == 0, result.output
    assert "pgd-at: another process is training it; skipped here" in result.output
    assert list(busy.iterdir()) == [] and (tmp_path / "runs" / "standard" / "summary.json").is_file()


def test_the_noise_rate_table_groups_by_rate_and_method_and_pairs_by_seed():
    from sglr_keras.reproduce.report import SEED_SUFFIX, noise_rate_table

    def result(method, rate, seed, best, last):
        return {"run": f"{method}-n{int(100 * rate)}-s{seed}", "method": method, "label_noise": rate, "seed": seed,
                "sglr": {"warmup_epochs": 4} if method == "sglr" else None,
                "curve": {"last_table_entropy": 1.5 if method == "sglr" else None},
                "checkpoints": {"best": {"pgd": best, "clean": 0.7, "ece": 0.1}, "last": {"pgd": last, "clean": 0.7,
                                                                                          "ece": 0.1}},
                "best_minus_last": {"pgd": best - last}}

    results = [result("pgd-at", 0.6, 0, 0.5, 0.25), result("sglr", 0.6, 0, 0.5, 0.5),
               result("pgd-at", 0.6, 1, 0.5, 0.30), result("sglr", 0.6, 1, 0.5, 0.45),
               result("pgd-at", 0.0, 0, 0.7, 0.65), result("sglr", 0.0, 0, 0.7, 0.70)]
    lines = noise_rate_table(results)
    assert ("| 60% | sglr (warm-up 4) | 2 | 50.0 +- 0.0 | 47.5 +- 3.5 | 2.5 +- 3.5 | 70.0 +- 0.0 | 10.0 +- 0.0 "
            "| 1.50 +- 0.00 |") in lines
    assert ("| 60% | sglr (warm-up 4) | 2 | +0.0 +- 0.0 (+0.0, +0.0) | +20.0 +- 7.1 (+25.0, +15.0) "
            "| -20.0 +- 7.1 (-25.0, -15.0) |") in lines
    assert lines.index("| 0% | pgd-at | 1 | 70.0 | 65.0 | 5.0 | 70.0 | 10.0 |  |") < lines.index(
        "| 60% | pgd-at | 2 | 50.0 +- 0.0 | 27.5 +- 3.5 | 22.5 +- 3.5 | 70.0 +- 0.0 | 10.0 +- 0.0 |  |")
    assert noise_rate_table([r for r in results if r["label_noise"] == 0.6]) == []
    assert SEED_SUFFIX.sub("", "pgd-at-n60-s1") == "pgd-at-n60" and SEED_SUFFIX.sub("", "sglr-seed2") == "sglr"
