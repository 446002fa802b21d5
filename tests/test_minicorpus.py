import re
import string

import numpy as np
import soundfile as sf

from ds2_helpers import minicorpus
from ds2_helpers.librispeech import read_manifest


def test_word_lists_cover_every_letter_and_the_apostrophe():
    words = " ".join(" ".join(getattr(minicorpus, n)) for n in
                     ["NAMES", "ADJECTIVES", "NOUNS", "VERBS_PAST", "VERBS", "PREPOSITIONS", "ADVERBS", "PRONOUNS",
                      "NEGATIONS", "NUMBERS", "PLURALS"]) + " ".join(minicorpus.TEMPLATES)
    assert set(string.ascii_uppercase + "'") <= set(words)


def test_layout_transcripts_and_speakers_file(tiny_corpus):
    flacs = sorted(tiny_corpus.glob("*/*/*/*.flac"))
    assert len(flacs) == 8 * 6
    for flac in flacs[:5]:
        split, spk, chap = flac.parts[-4:-1]
        assert split in ("train", "dev", "test")
        assert re.fullmatch(rf"{spk}-{chap}-\d{{4}}\.flac", flac.name)
        info = sf.info(str(flac))
        assert info.samplerate == 16000 and info.format == "FLAC" and info.frames > 8000
    trans = sorted(tiny_corpus.glob("*/*/*/*.trans.txt"))
    assert len(trans) == 8
    for t in trans:
        for line in t.read_text().splitlines():
            utt, text = line.split(" ", 1)
            assert text == text.upper() and (t.parent / f"{utt}.flac").exists()
    speakers = (tiny_corpus / "SPEAKERS.TXT").read_text().splitlines()
    assert speakers[0].startswith(";ID") and len(speakers) == 9


def test_test_split_has_unseen_speakers_and_sentences(tiny_corpus):
    splits = {s: read_manifest(tiny_corpus / f"{s}.csv") for s in ("train", "dev", "test")}
    assert set(splits["test"].speaker).isdisjoint(splits["train"].speaker)
    assert set(splits["dev"].speaker).isdisjoint(splits["train"].speaker)
    assert set(splits["test"].transcript).isdisjoint(splits["train"].transcript)
    assert len(splits["train"]) == 6 * 6 and len(splits["test"]) == 6


def test_speakers_differ_in_voice_pitch_and_rate():
    import random

    spk = minicorpus.make_speakers(24, random.Random(0))
    assert len({s.voice.name for s in spk}) == 24
    assert len({s.voice.pitch for s in spk}) > 5 and len({s.voice.rate for s in spk}) > 5
    assert {s.split for s in spk} == {"train", "dev", "test"}


def test_same_seed_same_corpus(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        minicorpus.build_minicorpus(out, speakers=3, utterances_per_speaker=3, seed=11, progress=False)
    ta = sorted(p.relative_to(a) for p in a.rglob("*.trans.txt"))
    assert ta == sorted(p.relative_to(b) for p in b.rglob("*.trans.txt"))
    for rel in ta:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    for flac in a.rglob("*.flac"):  # espeak keeps a little state between calls, so compare durations
        assert abs(sf.info(str(flac)).frames / sf.info(str(b / flac.relative_to(a))).frames - 1) < 0.02
    minicorpus.build_minicorpus(tmp_path / "c", speakers=3, utterances_per_speaker=3, seed=12, progress=False)
    other = sorted((tmp_path / "c").rglob("*.trans.txt"))
    assert b"".join(p.read_bytes() for p in other) != b"".join((a / r).read_bytes() for r in ta)


def test_resampling_keeps_duration():
    tone = (np.sin(np.arange(22050) / 5) * 8000).astype(np.int16)
    out = minicorpus.to_16k(tone, 22050)
    assert out.dtype == np.float32 and len(out) == 16000
