"""The committed mini checkpoint loads and decodes the unseen test speakers well enough to fine-tune from."""

import mindspore as ms
import pytest

from ds2_helpers import checkpoint as ckpt
from ds2_helpers.config import ModelConfig, SpectConfig, from_dict, model_preset
from ds2_helpers.dataset import SpeechData
from ds2_helpers.evaluate import evaluate
from ds2_helpers.librispeech import build_manifest
from ds2_helpers.minicorpus import build_minicorpus
from ds2_helpers.model import DeepSpeech2
from ds2_helpers.paths import data_dir, mini_corpus_dir

CHECKPOINT = data_dir() / "mini_pretrained.ckpt"


@pytest.fixture(scope="module")
def test_manifest(tmp_path_factory):
    """The default mini corpus's test split (built by `make corpus`; rebuilt in a temp folder if absent)."""
    path = mini_corpus_dir() / "test.csv"
    if path.exists():
        return path
    root = tmp_path_factory.mktemp("mini")
    build_minicorpus(root, progress=False)
    build_manifest(root, "test", root / "test.csv", strict=True)
    return root / "test.csv"


def test_checkpoint_is_small_and_records_its_config():
    assert CHECKPOINT.exists(), "data/mini_pretrained.ckpt is missing: run `make mini-checkpoint`"
    assert CHECKPOINT.stat().st_size < 20e6
    _, meta = ckpt.read(CHECKPOINT)
    assert from_dict(ModelConfig, meta["model"]) == model_preset("mini")
    assert from_dict(SpectConfig, meta["spect"]) == SpectConfig()


def test_greedy_cer_on_the_unseen_test_speakers(test_manifest):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = DeepSpeech2(model_preset("mini"))
    ckpt.load_into(net, CHECKPOINT)
    results, summary = evaluate(net, SpeechData(test_manifest))
    assert summary["utterances"] == len(results) >= 100
    assert summary["cer"] <= 0.25, results.sort_values("cer").tail(5)[["reference", "hypothesis"]].to_string()
