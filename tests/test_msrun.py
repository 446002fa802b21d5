"""Data parallel with MindSpore's own launcher: 2 workers on 127.0.0.1, the same `train` command."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ds2_helpers import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_end_with_identical_weights_after_seeing_different_data(tiny_corpus, tmp_path):
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", GLOG_v="3")
    out = tmp_path / "out"
    cmd = [str(bindir / "msrun"), "--worker_num", "2", "--local_worker_num", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "--log_dir", str(tmp_path / "logs"), "--join", "True",
           str(REPO / "ds2_helpers" / "__main__.py"), "train", "--preset", "mini",
           "--manifest", str(tiny_corpus / "train.csv"), "--batch-size", "4", "--max-steps", "3",
           "--pretrained", str(REPO / "data" / "mini_pretrained.ckpt"),
           "--mode", "pynative", "--save-every", "0", "--out", str(out)]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text()[-3000:] for p in (tmp_path / "logs").glob("*.log"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + logs
    a, _ = ckpt.read(out / "final.rank0.ckpt")
    b, _ = ckpt.read(out / "final.rank1.ckpt")
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, err_msg=name)
    seen = [pd.read_csv(out / f"metrics.rank{r}.csv").utterance_ids.str.split().sum() for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 12 and not set(seen[0]) & set(seen[1])
    before, _ = ckpt.read(REPO / "data" / "mini_pretrained.ckpt")
    after, _ = ckpt.read(out / "final.ckpt")
    np.testing.assert_allclose(after["fc.module.weight"], a["fc.module.weight"], atol=1e-6)
    trainable = [n for n in before if "moving_" not in n]
    moved = [n for n in trainable if not np.allclose(after[n], before[n])]
    assert moved == trainable, f"not trained: {sorted(set(trainable) - set(moved))}"
