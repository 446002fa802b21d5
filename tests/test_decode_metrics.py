import numpy as np
import pytest

from ds2_helpers import decode, metrics
from ds2_helpers.labels import BLANK_INDEX, encode


def one_hot_path(path: list[int], classes: int = 29) -> np.ndarray:
    logits = np.full((len(path), classes), -5.0, np.float32)
    logits[np.arange(len(path)), path] = 5.0
    return logits


def test_greedy_merges_repeats_drops_blanks_and_respects_lengths():
    a, b, space, blank = encode("A")[0], encode("B")[0], encode("A B")[1], BLANK_INDEX
    path = [a, a, blank, a, space, b, b, blank]
    logits = one_hot_path(path)
    assert decode.greedy_indices(logits) == [a, a, space, b]
    batch = np.stack([logits, one_hot_path([b, blank, b, b, a, a, a, a])], axis=1)  # [T, N, C]
    assert decode.greedy_decode(batch, [8, 3]) == ["AA B", "BB"]  # the second stops at its own length


def test_beam_search_agrees_with_greedy_on_a_confident_path_and_can_beat_it():
    a, b, blank = encode("A")[0], encode("B")[0], BLANK_INDEX
    confident = one_hot_path([a, blank, b, b])[:, None]
    assert decode.beam_decode(confident, [4]) == decode.greedy_decode(confident, [4]) == ["AB"]
    # best path is blank,blank (empty) but the summed probability of all paths spelling "A" is larger
    p = np.array([[0.4, 0.6], [0.4, 0.6]])  # columns: A, blank
    logits = np.full((2, 29), -30.0)
    logits[:, a], logits[:, blank] = np.log(p[:, 0]), np.log(p[:, 1])
    assert decode.greedy_decode(logits[:, None], [2]) == [""]
    assert decode.beam_decode(logits[:, None].astype(np.float32), [2]) == ["A"]


def test_missing_language_model_is_a_clear_error(tmp_path):
    with pytest.raises(decode.DecoderError, match="no such language model"):
        decode.beam_decoder(str(tmp_path / "3-gram.arpa"))


def test_metrics_by_hand_and_with_jiwer():
    refs, hyps = ["THE CAT SAT", "A DOG"], ["THE CAT SAT", "A FOG"]
    assert metrics.wer(refs, hyps) == pytest.approx(1 / 5)  # one substituted word of five
    assert metrics.cer(refs, hyps) == pytest.approx(1 / 16)  # one character of 11 + 5 (spaces count)
    assert metrics.cer_zoo(refs, hyps) == pytest.approx(1 / 13)  # the model zoo drops spaces: 9 + 4
