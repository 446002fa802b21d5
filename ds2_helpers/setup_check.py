"""Before the large downloads: is this Python, this machine, this disk and this network able to set up the workbook?

`make venv` runs this file by path with the Python it is about to use, before it installs anything. It uses
the standard library only, and is written so that an unsupported Python (3.6 and newer) can run it far enough
to say what to do. The supported Pythons come from pyproject.toml's `requires-python`, the disk that a venv
takes from data/setup_reference.json (measured on the reference machine).

    python3 ds2_helpers/setup_check.py --find           # prints the newest supported python3.1x on PATH
    python3.12 ds2_helpers/setup_check.py --venv .venv  # checks, creates the (empty) venv, asks the index
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTED_MACHINES = ("x86_64",)  # where the workbook was installed and tested
OTHER_MACHINES = ("aarch64",)  # where MindSpore publishes CPU wheels too, untested here
DOWNLOAD_MARGIN_GB = 1.0  # pip keeps the downloaded wheels (MindSpore's is the largest) while it installs


def supported_pythons():
    """[(3, 10), (3, 11), (3, 12)] from pyproject.toml's requires-python = ">=3.10,<3.13"."""
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        text = f.read()
    low, high = re.search(r'requires-python\s*=\s*">=3\.(\d+),\s*<3\.(\d+)"', text).groups()
    return [(3, minor) for minor in range(int(low), int(high))]


def mindspore_pin():
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        return re.search(r'"mindspore==([^";]+)"', f.read()).group(1)


def reference():
    with open(os.path.join(REPO, "data", "setup_reference.json")) as f:
        return json.load(f)


def venv_gb_needed():
    """Disk for the virtual environment: the largest measured venv plus the wheels pip holds while installing."""
    sizes = [row["venv_gb"] for row in reference()["pythons"].values()]
    return round(max(sizes) + DOWNLOAD_MARGIN_GB, 1)


def readme_table():
    """The measured set-up table README.md shows (tests/test_setup.py keeps the two equal)."""
    def minutes(row, key):
        if key not in row:
            return "not measured"
        shared = " (machine shared with other jobs)" if key in row.get("under_load", []) else ""
        minutes = row[key] / 60
        return ("%.1f min%s" if minutes < 10 else "%.0f min%s") % (minutes, shared)

    lines = ["| Python | `.venv` on disk | `make venv` | `make workbook` | `make test` |",
             "| --- | --- | --- | --- | --- |"]
    for minor, row in sorted(reference()["pythons"].items(), key=lambda kv: int(kv[0].split(".")[1])):
        lines.append("| %s | %.1f GB | %s | %s | %s |" % (row["python"], row["venv_gb"], minutes(row, "venv_s"),
                                                         minutes(row, "workbook_s"), minutes(row, "test_s")))
    return "\n".join(lines)


def names(versions):
    return ", ".join("%d.%d" % v for v in versions)


def how_to_get_python():
    newest = "%d.%d" % supported_pythons()[-1]
    return ("install one with the distribution's package (Ubuntu 22.04: python3.10 python3.10-venv; Debian 12: "
            "python3.11 python3.11-venv; Ubuntu 24.04: python3.12 python3.12-venv), or pyenv "
            "(pyenv install %s, then make PYTHON=$(pyenv root)/versions/%s.*/bin/python), or conda "
            "(conda env create -f environment.yml)" % (newest, newest))


def run_python(python, code, timeout=60):
    """(ok, output) of `python -c code`."""
    try:
        out = subprocess.run([python, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return out.returncode == 0, out.stdout.strip()


def python_version(python):
    ok, out = run_python(python, "import sys; print('%d.%d.%d' % sys.version_info[:3])")
    if not ok or not re.fullmatch(r"\d+\.\d+\.\d+", out or ""):
        return None
    return tuple(int(x) for x in out.split("."))


def find_python():
    """The newest supported python3.1x on PATH that runs, else python3 if it is supported; None if neither."""
    for major, minor in reversed(supported_pythons()):
        for name in ("python%d.%d" % (major, minor),):
            path = shutil.which(name)
            version = path and python_version(path)
            if version and version[:2] == (major, minor):  # a pyenv shim of an inactive version does not run
                return path
    path = shutil.which("python3")
    version = path and python_version(path)
    if version and version[:2] in supported_pythons():
        return path
    return None


def find_all():
    """[(version, path)] for each supported Python found: pythonX.Y on PATH, else pyenv's newest X.Y.*."""
    import glob

    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = []
    for major, minor in supported_pythons():
        candidates = [shutil.which("python%d.%d" % (major, minor))]
        candidates += sorted(glob.glob(os.path.join(root, "versions", "%d.%d.*" % (major, minor), "bin", "python")),
                             key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("versions")[-1])[:3]],
                             reverse=True)
        for path in filter(None, candidates):
            version = python_version(path)
            if version and version[:2] == (major, minor):
                found.append(("%d.%d.%d" % version, path))
                break
    return found


def index_check(venv_python, pin):
    """Ask the package index which MindSpore versions have a wheel for this Python and machine."""
    try:
        out = subprocess.run([venv_python, "-m", "pip", "index", "versions", "mindspore"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False, "pip did not reach the package index within 120 s: check the network, or pip's index and " \
                      "proxy settings (pip config list; HTTPS_PROXY)"
    listed = re.search(r"Available versions:\s*(.*)", out.stdout)
    if listed is None:
        last = [line for line in out.stdout.splitlines() if line.strip() and "WARNING" not in line][-1:]
        return False, "pip could not list MindSpore from the package index (%s): check the network, or pip's " \
                      "index and proxy settings (pip config list; HTTPS_PROXY)" % (last[0] if last else "no output")
    versions = [v.strip() for v in listed.group(1).split(",")]
    if pin not in versions:
        return False, "the package index has no MindSpore %s wheel for this Python and machine (it offers: %s)" % (
            pin, ", ".join(versions[:4]) or "none")
    return True, "MindSpore %s has a wheel for this Python and machine" % pin


def check(venv, create=True):
    """Run every check, print one table, return the list of errors (empty: go ahead)."""
    rows, errors = [], []

    def row(what, ok, text, fix=""):
        rows.append((what, "ok" if ok else "FAIL", text))
        if not ok:
            errors.append("%s: %s%s" % (what, text, "; " + fix if fix else ""))

    supported = supported_pythons()
    version = sys.version_info[:3]
    py_ok = version[:2] in supported
    row("python", py_ok, "%d.%d.%d at %s (supported: %s)" % (version + (sys.executable, names(supported))),
        "" if py_ok else how_to_get_python())

    machine = platform.machine()
    if machine in TESTED_MACHINES:
        row("machine", True, "%s (tested)" % machine)
    elif machine in OTHER_MACHINES:
        row("machine", True, "%s: MindSpore publishes wheels for it, but the workbook was tested on %s only" % (
            machine, ", ".join(TESTED_MACHINES)))
    else:
        row("machine", False, "%s: MindSpore publishes CPU wheels for %s only" % (
            machine, ", ".join(TESTED_MACHINES + OTHER_MACHINES)))

    target = os.path.abspath(venv)
    parent = target
    while not os.path.isdir(parent):  # the first folder that exists on the way to the venv
        parent = os.path.dirname(parent)
    need = venv_gb_needed()
    free = shutil.disk_usage(parent).free / 2 ** 30
    row("disk", free >= need, "%.1f GB free in %s, the environment needs about %.1f GB%s" % (
        free, parent, need, "" if free >= need else ": free some space or set VENV=/a/bigger/disk/venv"))

    venv_ok, out = run_python(sys.executable, "import venv, ensurepip")
    row("venv", venv_ok, "the venv module and ensurepip are there" if venv_ok else
        "this Python cannot make a virtual environment (%s): on Debian/Ubuntu install python%d.%d-venv" % (
            out.splitlines()[-1] if out else "no output", version[0], version[1]))

    venv_python = os.path.join(target, "bin", "python")
    if os.path.exists(venv_python):
        have = python_version(venv_python)
        if have and have[:2] != version[:2]:
            row("venv", False, "%s was made with Python %s, not %d.%d: remove it (rm -rf %s) to rebuild it" % (
                venv, ".".join(map(str, have)), version[0], version[1], venv))

    if not errors and create:
        if not os.path.exists(venv_python):
            subprocess.check_call([sys.executable, "-m", "venv", target])  # local and small: no download yet
        ok, text = index_check(venv_python, mindspore_pin())
        row("index", ok, text)

    width = max(len(r[0]) for r in rows)
    print("set-up check (ds2_helpers/setup_check.py)")
    for what, status, text in rows:
        print("  %s  %-4s  %s" % (what.ljust(width), status, text))
    return errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--find", action="store_true", help="print the newest supported Python on PATH and exit")
    parser.add_argument("--find-all", action="store_true",
                        help="print 'version path' for each supported Python found (PATH, then pyenv) and exit")
    parser.add_argument("--supported", action="store_true", help="print the supported versions (3.10 ...) and exit")
    parser.add_argument("--venv", default=".venv", help="where the virtual environment goes")
    parser.add_argument("--no-create", action="store_true", help="check only: do not create the venv or ask pip")
    args = parser.parse_args(argv)
    if args.supported:
        print(" ".join("%d.%d" % v for v in supported_pythons()))
        return 0
    if args.find_all:
        for version, path in find_all():
            print(version, path)
        return 0
    if args.find:
        path = find_python()
        if path is None:
            print("error: no Python %s found on PATH; %s" % (names(supported_pythons()), how_to_get_python()),
                  file=sys.stderr)
            return 1
        print(path)
        return 0
    errors = check(args.venv, create=not args.no_create)
    sys.stdout.flush()
    for e in errors:
        print("error: " + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
