import json

import pytest

from ds2_helpers import labels
from ds2_helpers.paths import data_dir


def test_alphabet_matches_model_zoo_order():
    assert len(labels.LABELS) == 29
    assert labels.LABELS[0] == "'" and labels.LABELS[1] == "A" and labels.LABELS[26] == "Z"
    assert labels.LABELS[27] == " " and labels.BLANK_INDEX == 28 and labels.LABELS[28] == "_"
    assert tuple(json.loads((data_dir() / "labels.json").read_text())) == labels.LABELS
    assert labels.load_labels() == labels.LABELS


def test_load_labels_rejects_reordered_file(tmp_path):
    bad = tmp_path / "labels.json"
    bad.write_text(json.dumps(list(reversed(labels.LABELS))))
    with pytest.raises(labels.LabelError, match="labels.json"):
        labels.load_labels(bad)


def test_normalise_folds_case_accents_apostrophes_and_spaces():
    assert labels.normalise_text("  Don\u2019t  café-au-lait\n") == "DON'T CAFE AU LAIT"


def test_encode_decode_round_trip():
    text = "IT'S A QUICK BROWN FOX"
    idx = labels.encode(text)
    assert labels.BLANK_INDEX not in idx
    assert labels.decode(idx) == text
    assert labels.encode("a") == [1]


def test_unknown_characters_are_reported_not_dropped():
    with pytest.raises(labels.LabelError, match="'01'"):
        labels.encode("ROOM 101")
    assert labels.encode("ROOM 1", strict=False) == labels.encode("ROOM") + [labels.SPACE_INDEX]
    assert labels.unknown_characters("A_B") == {"_"}
