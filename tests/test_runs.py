"""The run record has one owner: sglr_keras/runs/ spells every file name of a
run folder; every other module asks it (issue 21)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = re.compile(r"config\.json|state\.json|history\.jsonl|history\.csv|selection_points\.json|run\.json"
                       r"|summary\.json|trainer\.weights\.h5|\.eval\.json|\.final\.json")


def _code_lines(path: Path):
    """Source lines outside docstrings and comments (names in prose are fine)."""
    text = path.read_text()
    text = re.sub(r'"""(?:.|\n)*?"""', lambda m: "\n" * m.group(0).count("\n"), text)
    for number, line in enumerate(text.splitlines(), 1):
        yield number, line.split("#")[0]


def test_no_run_folder_file_name_is_spelled_outside_sglr_keras_runs():
    owners = ROOT / "sglr_keras" / "runs"
    offenders = []
    for folder in ("sglr_keras", "cli", "export"):
        for path in (ROOT / folder).rglob("*.py"):
            if owners in path.parents:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{n}" for n, line in _code_lines(path) if RUN_FILES.search(line)]
    assert offenders == []


def test_the_runs_package_is_where_the_names_are():
    from sglr_keras.runs import RunFolder

    folder = RunFolder("/r")
    assert (folder.config.name, folder.state.name, folder.selection_points.name) == (
        "config.json", "state.json", "selection_points.json")
