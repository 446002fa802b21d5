"""environment.yml and pyproject.toml must pin the same versions; the environment checks must work."""

import re

import pytest

from ds2_helpers import environment
from ds2_helpers.paths import repo_path


def environment_yml_pins() -> dict[str, str]:
    text = repo_path("environment.yml").read_text()
    return dict(re.findall(r"^\s*-\s*([A-Za-z0-9_.\-]+)==(\S+)\s*$", text, flags=re.M))


def test_environment_yml_matches_pyproject():
    """environment.yml is the 3.11 set: the same pins pyproject.toml gives Python 3.11."""
    pyproject = environment.pinned_requirements("3.11")
    assert {"mindspore", "numpy", "jupyterlab", "librosa", "espeakng-loader", "nbmake", "jiwer"} <= set(pyproject)
    assert pyproject["mindspore"] == "2.10.0" and pyproject["numpy"].startswith("1.")
    assert environment_yml_pins() == pyproject
    assert re.search(r"^\s*-\s*python=3\.11\s*$", repo_path("environment.yml").read_text(), flags=re.M)


def test_pins_per_python():
    """One pin per package for each supported Python; 3.10 gets the releases that still support it."""
    sets = {v: environment.pinned_requirements(v) for v in ("3.10", "3.11", "3.12")}
    assert set(sets["3.10"]) == set(sets["3.11"]) == set(sets["3.12"])
    assert sets["3.11"] == sets["3.12"]
    differ = {k for k in sets["3.10"] if sets["3.10"][k] != sets["3.11"][k]}
    assert differ == {"scipy", "matplotlib", "pandas"}
    assert sets["3.10"]["pandas"].startswith("2.") and sets["3.11"]["pandas"].startswith("3.")


def test_installed_packages_match_the_pins():
    report = environment.package_report()
    assert report.ok.all(), report[~report.ok].to_string()


def test_a_wrong_package_gets_the_pinned_fix(monkeypatch):
    """A package installed at another version gets one fix line: its pin, or make venv."""
    pin = environment.pinned_requirements()["jiwer"]
    monkeypatch.setattr(environment.md, "version", lambda name: "0.0.1" if name == "jiwer" else pin)
    report = environment.package_report().set_index("package")
    assert not report.loc["jiwer", "ok"] and report.loc["jiwer", "installed"] == "0.0.1"
    assert report.loc["jiwer", "fix"] == f"pip install 'jiwer=={pin}' (or: make venv)"
    assert environment.pip_fix("mindspore", "numpy<2") == (
        f"pip install 'mindspore=={environment.pinned_requirements()['mindspore']}' 'numpy<2' (or: make venv)")


def test_mindspore_and_espeak_run_here():
    ms = environment.mindspore_check()
    assert ms["graph ok"] and ms["pynative ok"] and "problem" not in ms
    assert environment.espeak_check()["espeak sample rate"] == 22050
    assert environment.machine_report()["cores (usable)"] >= 1


@pytest.mark.parametrize("files, quota, cores", [
    ({"cpu.max": "max 100000\n"}, None, None),
    ({"cpu.max": "150000 100000\n"}, 1.5, 2),                      # 1.5 cores' worth: 2 threads, rounded up
    ({"cpu.max": "50000 100000"}, 0.5, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None, None),  # cgroup v1, no limit
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.0, 1),  # cgroup v1: 1 core
    ({}, None, None),                                                # no control group files: the affinity mask
])
def test_a_containers_cpu_quota_limits_the_usable_cores(tmp_path, files, quota, cores):
    import os

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert environment.cpu_quota(str(tmp_path)) == quota
    assert environment.usable_cores(str(tmp_path)) == (affinity if cores is None else min(affinity, cores))
