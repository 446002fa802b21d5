"""The oneDNN instruction-set cap: set unless the user chose, in force even when MindSpore was imported first."""

import os
import subprocess
import sys

from ds2_helpers import onednn


def test_configure_caps_at_avx2_unless_the_user_chose():
    env = {}
    assert onednn.configure(env) == "AVX2" and env == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert onednn.configure({"ONEDNN_MAX_CPU_ISA": "ALL"}) == "ALL"
    assert onednn.configure({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}) == "AVX512_CORE"


def test_the_cap_is_in_force_after_import_mindspore_then_ds2_helpers():
    code = ("import mindspore as ms, numpy as np\nimport ds2_helpers\nfrom mindspore import nn\n"
            "nn.Conv2d(1, 2, 3)(ms.Tensor(np.ones((1, 1, 8, 8), np.float32)))\n")
    env = {k: v for k, v in os.environ.items() if k not in onednn.VARIABLES}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(env, ONEDNN_VERBOSE="1", GLOG_v="3"))
    isa = [l for l in (run.stdout + run.stderr).splitlines() if ",info,cpu,isa:" in l]
    assert isa and "AVX2" in isa[0] and "512" not in isa[0], isa


def test_primitive_times_reads_onednns_own_account():
    rows = onednn.primitive_times("AVX2", preset="mini", batch=2, frames=64)
    conv = [r for r in rows if r["primitive"] == "convolution"]
    assert {r["pass"] for r in conv} >= {"forward_training", "backward_data", "backward_weights"}
    assert all(r["implementation"] == "x64:gemm:jit" and r["milliseconds"] > 0 for r in conv)
    assert any(r["primitive"] == "rnn" for r in rows)


def test_inference_times_run_each_cap_and_convolution_in_its_own_process():
    rows = onednn.inference_times(("SSE41", "AVX2"), convs=("native", "matmul"), preset="mini", batch_seconds=10.0,
                                  utterances=2, timeout=600)
    assert [(r["conv"], r["isa"]) for r in rows] == [("native", "SSE41"), ("native", "AVX2"),
                                                      ("matmul", "SSE41"), ("matmul", "AVX2")]
    assert all(r["error"] is None and r["rtf"] > 0 and r["audio_seconds"] > 0 for r in rows), rows
    assert [r["child_isa"] for r in rows] == [r["isa"] for r in rows]  # the cap reached the child


def test_summary_states_the_inference_rows():
    rows = [{"preset": "paper", "batch_seconds": 40.0, "conv": conv, "isa": isa, "audio_seconds": 61.2, "rtf": rtf}
            for conv, isa, rtf in (("native", "ALL", 0.9), ("native", "AVX2", 0.3), ("matmul", "ALL", 0.45))]
    text = onednn._inference_summary(rows)
    assert text == (" Inference too (`paper`, evaluate's batches of up to 40 s, 61 s of audio): RTF 0.900 with "
                    "every instruction set allowed, 0.300 capped (3.0x); with our matrix-product convolution 0.450 "
                    "uncapped.")
    rows.append({**rows[-1], "isa": "AVX2", "rtf": 0.5})
    assert onednn._inference_summary(rows).endswith("convolution 0.450 uncapped, 0.500 capped.")
    assert onednn._inference_summary(rows[2:]) == ""  # no capped/uncapped pair: nothing to say


def test_readme_quotes_the_committed_measurement():
    import json

    from ds2_helpers.paths import repo_path

    result = json.loads(repo_path("data", "onednn_isa_reference_2core.json").read_text())
    readme = " ".join(repo_path("README.md").read_text().split())
    assert onednn.summary(result) in readme
    steps = {(r["preset"], r["conv"], r["isa"]): r["step_seconds"] for r in result["steps"]}
    assert steps[("paper", "native", "AVX2")] < steps[("paper", "native", "ALL")]  # the claim the cap rests on
    rtf = {(r["conv"], r["isa"]): r["rtf"] for r in result["inference"]}
    assert rtf[("native", "ALL")] > 2 * rtf[("native", "AVX2")]  # inference: the cap matters for Conv2d too,
    assert rtf[("matmul", "ALL")] > 0.95 * rtf[("native", "AVX2")]  # and lifting it gains nothing:
    assert "Lifting the cap gains inference nothing: its best uncapped run only matched the capped one." in readme
    assert "the best uncapped inference run only matched the capped one" in readme
