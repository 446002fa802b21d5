"""Notebooks are committed clean: no outputs, a title first, a tagged parameters cell second."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_the_numbered_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["00_environment", "01_manifests", "02_spectrograms", "03_model", "04_train", "05_evaluate",
                     "06_export", "07_speedups"]


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
