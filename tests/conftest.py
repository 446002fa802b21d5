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
