"""Notebooks are committed clean: no outputs, a title first, a tagged parameters cell second."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_the_numbered_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["00_environment", "01_manifests", "02_spectrograms", "03_model", "04_train", "05_evaluate",
                     "06_export", "07_speedups", "08_training_recipes"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_structured(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    assert "In this notebook you will" in "".join(cells[0]["source"])
    assert "parameters" in cells[1].get("metadata", {}).get("tags", []), "second cell must be tagged parameters"
    text = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "## Summary" in text and "## Exercises" in text
    assert "/root/" not in path.read_text() and "/home/" not in path.read_text(), "no personal absolute paths"
    ids = [c.get("id") for c in cells]
    assert (nb["nbformat"], nb["nbformat_minor"]) < (4, 5) or (all(ids) and len(set(ids)) == len(ids)), \
        "nbformat 4.5 cells need unique ids (nbformat warns now, will refuse later)"


def test_mode_line_says_what_each_mode_changes():
    from ds2_helpers.notebook import mode_line

    ns = {"STEPS": 60, "FULL": False}
    assert mode_line(True, ns, {"STEPS": 4}) .startswith("QUICK mode (DS2_QUICK=1")
    assert "STEPS 60 -> 4" in mode_line(True, ns, {"STEPS": 4}) and "smoke test" in mode_line(True, ns, {"STEPS": 4})
    unset = mode_line(False, ns, {"FULL": False})
    assert unset == "DS2_QUICK unset: the parameters cell runs as written (FULL = False)" and "FULL mode" not in unset
    assert "runs the same in both modes" in mode_line(False, ns, {})


def test_setup_applies_the_quick_values_only_in_quick_mode(monkeypatch, capsys):
    from ds2_helpers.notebook import setup

    ns = {"STEPS": 60}
    monkeypatch.setenv("DS2_QUICK", "1")
    assert setup(ns, quick={"STEPS": 4}) is True and ns["STEPS"] == 4
    monkeypatch.delenv("DS2_QUICK")
    ns = {"STEPS": 60}
    assert setup(ns, quick={"STEPS": 4}) is False and ns["STEPS"] == 60
    assert "STEPS = 60" in capsys.readouterr().out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_quick_values_go_through_setup(path):
    """A notebook shrinks its runs only through notebook.setup(quick=...), so its mode line tells the truth."""
    source = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    assert "notebook.setup(" in source and "if QUICK:\n    " not in source.split("notebook.setup(", 1)[1][:200]


def test_with_source_file_writes_a_cells_code_where_python_says_it_lives(tmp_path):
    """A notebook cell's functions and Cell classes name a file that does not exist; MindSpore's compiler reads
    it. The decorator writes the cell's source (from linecache, where IPython keeps it) to that name."""
    import linecache

    from ds2_helpers.notebook import with_source_file

    fake = tmp_path / "ipykernel_1" / "cell.py"
    source = "def f(x):\n    return x + 1\n\n\nclass C:\n    def construct(self, x):\n        return x\n"
    linecache.cache[str(fake)] = (len(source), None, source.splitlines(keepends=True), str(fake))
    space = {}
    exec(compile(source, str(fake), "exec"), space)
    assert with_source_file(space["f"]) is space["f"] and fake.read_text() == source
    fake.unlink()
    assert with_source_file(space["C"]) is space["C"] and fake.read_text() == source
