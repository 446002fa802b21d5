"""The set-up check that `make venv` runs before any download: each failure names the fix."""

import os
import re
import stat
import subprocess
import sys

import pytest

from ds2_helpers import setup_check
from ds2_helpers.paths import repo_path

SCRIPT = str(repo_path("ds2_helpers", "setup_check.py"))


def fake_python(path, version="3.9.1", pip_output=""):
    """An executable that answers the version query like Python and `-m pip index versions` like pip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n"
                    f'if [ "$1" = "-m" ]; then printf "%s\\n" "{pip_output}"; exit 0; fi\n'
                    f"echo {version}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_supported_pythons_come_from_pyproject():
    assert setup_check.supported_pythons() == [(3, 10), (3, 11), (3, 12)]
    text = repo_path("pyproject.toml").read_text()
    assert 'requires-python = ">=3.10,<3.13"' in text
    assert tuple(sys.version_info[:2]) in setup_check.supported_pythons()


def test_find_picks_a_supported_python_that_runs():
    out = subprocess.run([sys.executable, SCRIPT, "--find"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    version = setup_check.python_version(out.stdout.strip())
    assert version[:2] in setup_check.supported_pythons()
    found = dict((v[:4], p) for v, p in (line.split() for line in subprocess.run(
        [sys.executable, SCRIPT, "--find-all"], capture_output=True, text=True).stdout.splitlines()))
    assert "{}.{}".format(*sys.version_info[:2]) in found


def test_a_shim_that_does_not_run_is_not_picked(tmp_path, monkeypatch):
    shim = tmp_path / "python3.12"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert setup_check.find_python() != str(shim)


def test_all_checks_pass_here(tmp_path, capsys):
    assert setup_check.check(str(tmp_path / "venv"), create=False) == []
    table = capsys.readouterr().out
    assert re.search(r"python\s+ok\s+3\.1[0-2]\.", table) and re.search(r"disk\s+ok", table)


def test_unsupported_python_names_the_versions_and_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(setup_check, "supported_pythons", lambda: [(3, 99)])
    errors = setup_check.check(str(tmp_path / "venv"))
    assert len(errors) == 1 and errors[0].startswith("python: ")
    assert "supported: 3.99" in errors[0] and "pyenv install 3.99" in errors[0] and "environment.yml" in errors[0]
    assert not (tmp_path / "venv").exists()  # nothing created, nothing downloaded


def test_too_little_disk_names_the_folder_and_the_need(tmp_path, monkeypatch):
    monkeypatch.setattr(setup_check, "venv_gb_needed", lambda: 1e6)
    (error,) = setup_check.check(str(tmp_path / "not" / "yet" / "venv"))  # folders made later by venv
    assert error.startswith("disk: ") and str(tmp_path) in error and "1000000.0 GB" in error and "VENV=" in error
    assert not (tmp_path / "venv").exists()


def test_a_venv_of_another_python_is_named(tmp_path):
    fake_python(tmp_path / "venv" / "bin" / "python", version="3.9.1")
    (error,) = setup_check.check(str(tmp_path / "venv"))
    assert "made with Python 3.9.1" in error and "rm -rf" in error


def test_index_without_the_pinned_wheel(tmp_path):
    version = "{}.{}.{}".format(*sys.version_info[:3])
    fake_python(tmp_path / "venv" / "bin" / "python", version=version,
                pip_output="mindspore (2.9.0)\\nAvailable versions: 2.9.0, 2.8.0")
    (error,) = setup_check.check(str(tmp_path / "venv"))
    assert error.startswith("index: ") and "no MindSpore 2.10.0 wheel" in error and "2.9.0" in error


def test_index_unreachable(tmp_path):
    version = "{}.{}.{}".format(*sys.version_info[:3])
    fake_python(tmp_path / "venv" / "bin" / "python", version=version,
                pip_output="ERROR: Could not connect to the index")
    (error,) = setup_check.check(str(tmp_path / "venv"))
    assert "could not list MindSpore" in error and "Could not connect" in error and "proxy" in error


@pytest.mark.skipif(not os.path.exists(os.path.expanduser("~/.pyenv/versions")), reason="no pyenv Pythons here")
def test_make_venv_with_an_unsupported_python_stops_before_anything(tmp_path):
    old = [p for p in (os.path.expanduser(f"~/.pyenv/versions/{v}/bin/python") for v in ("3.9.18", "3.8.18"))
           if os.path.exists(p)]
    if not old:
        pytest.skip("no Python older than 3.10 in pyenv here")
    out = subprocess.run(["make", "-s", "venv", f"PYTHON={old[0]}", f"VENV={tmp_path / 'venv'}"],
                         cwd=repo_path(), capture_output=True, text=True)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "supported: 3.10, 3.11, 3.12" in errors[0]
    assert not (tmp_path / "venv").exists()


def test_readme_states_the_supported_pythons_measured_times_and_disk():
    readme = repo_path("README.md").read_text()
    assert "Python 3.10, 3.11 or 3.12" in readme
    assert setup_check.readme_table() in readme
    ref = setup_check.reference()["pythons"]
    assert set(ref) <= {"3.10", "3.11", "3.12"} and all(row["venv_gb"] > 1 for row in ref.values())
    from ds2_helpers.plan import librispeech_disk

    disk = librispeech_disk()
    assert readme_disk_sentence(disk) in readme
    assert disk["total"] == pytest.approx(sum(v for k, v in disk.items() if k != "total"), abs=0.2)


def readme_disk_sentence(disk):
    return (f"archives {disk['archives']} GB (delete them once extracted), the extracted FLAC about "
            f"{disk['extracted']} GB, the training subset's feature cache {disk['feature_cache']} GB (with "
            f"`--feature-cache`), checkpoints {disk['checkpoints']} GB: about {disk['total']} GB in all")
