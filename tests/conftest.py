"""Shared fixtures: a tiny synthetic corpus built once per session, in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GLOG_v", "3")  # quiet MindSpore's C++ logging in test output


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """6 speakers x 6 utterances in LibriSpeech layout, with manifests."""
    from ds2_helpers.librispeech import build_manifest
    from ds2_helpers.minicorpus import SPLITS, build_minicorpus

    root = tmp_path_factory.mktemp("tiny")
    build_minicorpus(root, speakers=8, utterances_per_speaker=6, seed=3, progress=False)
    for split in SPLITS:
        build_manifest(root, split, root / f"{split}.csv", strict=True)
    return root


def fresh_process_json(tmp_path: Path, source: str, *args: str) -> dict:
    """Run `source` as a script in a fresh Python process (a file: Graph mode reads a Cell's source) with `args`;
    return the JSON object on its last line of output. Memory tests use it so that one measurement's peak and
    MindSpore's memory pool never leak into another's."""
    import json
    import subprocess
    import sys

    script = tmp_path / "fresh_process.py"
    script.write_text(source)
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])
