"""The embedded mini corpus: synthetic speech in LibriSpeech's own layout, built anywhere pip works."""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf

from ds2_helpers.config import ParameterError
from ds2_helpers.espeak import Espeak, Voice
from ds2_helpers.labels import unknown_characters

# Word lists written for this project; together they use every letter A-Z and the apostrophe.
NAMES = ["JACK", "QUINN", "ZOE", "MAX", "VERA", "KATE", "OLIVER", "JANE", "FELIX", "HAZEL", "VICTOR", "ROSE",
         "BEN", "LUCY", "WYATT", "GRACE"]
ADJECTIVES = ["QUICK", "LAZY", "BROWN", "QUIET", "HAPPY", "COLD", "YELLOW", "FUZZY", "EXTRA", "OLD", "YOUNG",
              "HEAVY", "BRIGHT", "SMALL", "GENTLE", "WICKED", "JOLLY", "VIVID", "DARK", "WARM"]
NOUNS = ["FOX", "DOG", "BOX", "QUEEN", "JUDGE", "WIZARD", "HORSE", "RIVER", "GARDEN", "WINDOW", "KETTLE",
         "VIOLIN", "JACKET", "ZEBRA", "LETTER", "MOUNTAIN", "SHIP", "BASKET", "PUZZLE", "CANDLE", "FARMER",
         "DOCTOR", "TOWER", "BRIDGE"]
VERBS_PAST = ["JUMPED", "WALKED", "LOOKED", "WAITED", "SLEPT", "SANG", "ROLLED", "DANCED", "FROZE", "WAVED",
              "KNOCKED", "SQUEEZED", "FIXED", "JOGGED", "VANISHED", "STAYED"]
VERBS = ["SEE", "FIND", "MOVE", "KEEP", "FIX", "JUDGE", "QUIZ", "BUY", "OPEN", "WASH", "VISIT", "PACK"]
PREPOSITIONS = ["OVER", "UNDER", "NEAR", "BESIDE", "BEHIND", "INTO", "TOWARD", "ACROSS", "AROUND", "PAST"]
ADVERBS = ["QUICKLY", "SLOWLY", "QUIETLY", "BRAVELY", "GLADLY", "JUSTLY", "VAGUELY", "EXACTLY", "SOFTLY"]
PRONOUNS = ["I", "WE", "YOU", "THEY"]
NEGATIONS = ["DON'T", "CAN'T", "WON'T", "DIDN'T", "SHOULDN'T", "COULDN'T"]
NUMBERS = ["TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE", "TEN", "TWELVE"]
PLURALS = ["FOXES", "DOGS", "BOXES", "QUEENS", "HORSES", "JACKETS", "ZEBRAS", "LETTERS", "SHIPS", "PUZZLES"]
TEMPLATES = [
    "THE {adj} {noun} {vpast} {prep} THE {adj2} {noun2}",
    "{name}'S {noun} {vpast} {adv}",
    "{pron} {neg} {verb} THE {adj} {noun}",
    "{num} {adj} {plural} {vpast} {prep} THE {noun}",
    "{name} {vpast} {prep} THE {noun} AND {vpast2} {adv}",
    "IT'S A {adj} {noun} SAID {name}",
    "{pron} {neg} {verb} {name}'S {noun} {adv}",
    "WHY DID THE {adj} {noun} {verb} THE {noun2}",
]

# espeak voices: language x variant; pitch, range and rate vary per speaker.
LANGUAGES = ["en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "john",
            "ian", "david", "linda", "anika", "steph", "max", "paul", "robert", "aunty"]
# The held-out "unseen voices" (build_unseen_voices): espeak variants no mini or LibriSpeech-like corpus uses (not
# in VARIANTS, whatever the seed or size), human-sounding ones only (no whisper, robot or croak), with the one
# English accent LANGUAGES leaves out added to the choice of accents.
UNSEEN_VARIANTS = ["m8", "adam", "benjamin", "edward", "Lee", "norbert", "quincy", "travis", "Michael", "Denis",
                   "caleb", "Andrea", "Annie", "Alicia", "belinda", "grandma"]
UNSEEN_LANGUAGES = LANGUAGES + ["en-gb-x-gbcwmd"]
FEMALE_VARIANTS = {"f1", "f2", "f3", "f4", "f5", "linda", "anika", "steph", "aunty",
                   "Andrea", "Annie", "Alicia", "belinda", "grandma"}
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker with a LibriSpeech-style numeric id and one chapter."""

    speaker_id: int
    chapter_id: int
    split: str
    voice: Voice

    @property
    def sex(self) -> str:
        """F or M, from the espeak variant, for SPEAKERS.TXT."""
        return "F" if self.voice.name.split("+")[1] in FEMALE_VARIANTS else "M"


def make_sentence(rng: random.Random) -> str:
    """One sentence from the grammar."""
    pick = rng.choice
    return pick(TEMPLATES).format(
        adj=pick(ADJECTIVES), adj2=pick(ADJECTIVES), noun=pick(NOUNS), noun2=pick(NOUNS), vpast=pick(VERBS_PAST),
        vpast2=pick(VERBS_PAST), verb=pick(VERBS), prep=pick(PREPOSITIONS), adv=pick(ADVERBS),
        name=pick(NAMES), pron=pick(PRONOUNS), neg=pick(NEGATIONS), num=pick(NUMBERS), plural=pick(PLURALS))


def make_sentences(n: int, rng: random.Random, exclude: set[str] = frozenset()) -> list[str]:
    """`n` distinct sentences, none of them in `exclude` (keeps test sentences out of train)."""
    out: list[str] = []
    seen = set(exclude)
    for _ in range(n * 1000):
        if len(out) == n:
            return out
        s = make_sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    raise ValueError(f"the grammar could not produce {n} distinct sentences; ask for fewer utterances")


def split_sizes(n_speakers: int) -> dict[str, int]:
    """Speakers per split: about 1/8 each for dev and test (at least one each), the rest train."""
    if n_speakers < 3:
        raise ValueError(f"--speakers {n_speakers}: need at least 3 (one each for train, dev and test)")
    held = max(1, n_speakers // 8)
    return {"train": n_speakers - 2 * held, "dev": held, "test": held}


def random_voice(name: str, rng: random.Random) -> Voice:
    """`name` with a rate of 140-195 words/min, pitch 25-75 and range 30-80 drawn from `rng`."""
    return Voice(name, rate=rng.randint(140, 195), pitch=rng.randint(25, 75), range=rng.randint(30, 80))


def make_speakers(n_speakers: int, rng: random.Random) -> list[Speaker]:
    """Distinct voices (language+variant pairs) with varied pitch, range and rate, assigned to splits."""
    pairs = [f"{lang}+{var}" for lang in LANGUAGES for var in VARIANTS]
    if n_speakers > len(pairs):
        raise ValueError(f"--speakers {n_speakers}: at most {len(pairs)} distinct voices are available")
    names = rng.sample(pairs, n_speakers)
    sizes = split_sizes(n_speakers)
    splits = [s for s in SPLITS for _ in range(sizes[s])]
    speakers = []
    for i, (name, split) in enumerate(zip(names, splits)):
        voice = random_voice(name, rng)
        speakers.append(Speaker(speaker_id=1000 + 37 * i, chapter_id=5000 + 11 * i, split=split, voice=voice))
    return speakers


def to_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Resample espeak's 22,050 Hz int16 output to 16 kHz float32 (polyphase 320/441)."""
    audio = samples.astype(np.float32) / 32768.0
    if sample_rate == 16000:
        return audio
    if sample_rate != 22050:
        raise ValueError(f"unexpected espeak sample rate {sample_rate}")
    return scipy.signal.resample_poly(audio, 320, 441).astype(np.float32)


def earlier_build(out: str | Path, splits: tuple[str, ...] = SPLITS) -> list[Path]:
    """The split folders of an earlier build in `out` (those that hold anything)."""
    out = Path(out)
    return [out / s for s in splits if (out / s).is_dir() and any((out / s).iterdir())]


@contextmanager
def fresh_build(out: str | Path, splits: tuple[str, ...] = SPLITS, *, overwrite: bool):
    """A temporary folder inside `out` to build a corpus into. A build into a folder that holds an earlier one
    would mix the two (other speakers, sentences or sizes under the same split folders): refused with
    ParameterError unless `overwrite`. Once the build succeeds, the earlier build's split folders, manifests and
    SPEAKERS.TXT (nothing else in `out`) are deleted and the new ones moved in; a build that fails leaves the
    earlier one as it was."""
    import shutil
    import tempfile

    out = Path(out)
    earlier = earlier_build(out, splits)
    if earlier and not overwrite:
        raise ParameterError(f"{out}: holds an earlier corpus ({', '.join(p.name + '/' for p in earlier)}); a new "
                             "build would mix with it: choose another --out, or pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".building-"))
    try:
        yield tmp
        for name in [*splits, *(f"{s}.csv" for s in splits), "SPEAKERS.TXT"]:
            old = out / name
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
            if (tmp / name).exists():
                (tmp / name).rename(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_minicorpus(out: str | Path, *, speakers: int = 32, utterances_per_speaker: int = 50, seed: int = 0,
                     progress: bool = True) -> dict[str, int]:
    """Synthesise the corpus into `out`/<split>/<speaker>/<chapter>/ with trans.txt files and SPEAKERS.TXT."""
    spk, test_sentences, other = plan_minicorpus(speakers, utterances_per_speaker, seed)
    pools = {split: test_sentences if split == "test" else other for split in SPLITS}
    return synthesise(out, spk, pools, utterances_per_speaker, progress=progress)


def plan_minicorpus(speakers: int = 32, utterances_per_speaker: int = 50, seed: int = 0
                    ) -> tuple[list[Speaker], list[str], list[str]]:
    """What `build_minicorpus` synthesises, without synthesising it: the speakers, the test sentences and the
    train/dev sentences (the defaults: the mini corpus of `make workbook`)."""
    rng = random.Random(seed)
    spk = make_speakers(speakers, rng)
    n_test = sum(s.split == "test" for s in spk) * utterances_per_speaker
    test_sentences = make_sentences(n_test, rng)
    other = make_sentences((len(spk) * utterances_per_speaker) - n_test, rng, exclude=set(test_sentences))
    return spk, test_sentences, other


def synthesise(out: str | Path, spk: list[Speaker], pools: dict[str, list[str]], utterances_per_speaker: int, *,
               progress: bool = True) -> dict[str, int]:
    """Speak `utterances_per_speaker` sentences per speaker, taken from the end of its split's pool, into
    `out`/<split>/<speaker>/<chapter>/ with trans.txt files and SPEAKERS.TXT; utterances per split."""
    from tqdm.auto import tqdm

    out = Path(out)
    engine = Espeak.get()
    counts = {s: 0 for s in SPLITS}
    bar = tqdm(total=len(spk) * utterances_per_speaker, desc="synthesising", unit="utt", disable=not progress)
    for speaker in spk:
        pool = pools[speaker.split]
        chapter_dir = out / speaker.split / str(speaker.speaker_id) / str(speaker.chapter_id)
        chapter_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for u in range(utterances_per_speaker):
            text = pool.pop()
            assert not unknown_characters(text), text
            utt = f"{speaker.speaker_id}-{speaker.chapter_id}-{u:04d}"
            audio = to_16k(engine.synthesize(text.lower(), speaker.voice), engine.sample_rate)
            sf.write(str(chapter_dir / f"{utt}.flac"), audio, 16000, subtype="PCM_16", format="FLAC")
            lines.append(f"{utt} {text}\n")
            counts[speaker.split] += 1
            bar.update()
        (chapter_dir / f"{speaker.speaker_id}-{speaker.chapter_id}.trans.txt").write_text("".join(lines))
    bar.close()
    write_speakers_txt(out / "SPEAKERS.TXT", spk, utterances_per_speaker)
    return counts


def unseen_speakers(n_speakers: int = 8, seed: int = 0) -> list[Speaker]:
    """`n_speakers` test speakers, each with its own variant from UNSEEN_VARIANTS (none of them in VARIANTS, so
    no corpus of `build_minicorpus` ever trains on them), an accent from UNSEEN_LANGUAGES and its own pitch,
    range and rate; ids from 8000 up, apart from the mini corpus's (1000 + 37 k)."""
    if not 1 <= n_speakers <= len(UNSEEN_VARIANTS):
        raise ParameterError(f"--speakers {n_speakers}: the unseen-voices set has between 1 and {len(UNSEEN_VARIANTS)} "
                         "speakers (one per unused espeak variant)")
    rng = random.Random(f"unseen voices {seed}")
    variants = rng.sample(UNSEEN_VARIANTS, n_speakers)
    return [Speaker(speaker_id=8000 + 37 * i, chapter_id=9000 + 11 * i, split="test",
                    voice=random_voice(f"{rng.choice(UNSEEN_LANGUAGES)}+{variant}", rng))
            for i, variant in enumerate(variants)]


def build_unseen_voices(out: str | Path, *, speakers: int = 8, utterances_per_speaker: int = 10, seed: int = 0,
                        progress: bool = True) -> dict[str, int]:
    """A held-out test set of voices the mini corpus never uses (`unseen_speakers`) speaking sentences it never
    uses (none of the default mini corpus's 1,600): `out`/test/... and SPEAKERS.TXT, deterministic in `seed`,
    a few seconds to build. Measures how a model trained on the mini corpus copes with new speakers."""
    spk = unseen_speakers(speakers, seed)
    _, test_sentences, other = plan_minicorpus()
    rng = random.Random(f"unseen sentences {seed}")
    pool = make_sentences(speakers * utterances_per_speaker, rng, exclude=set(test_sentences) | set(other))
    counts = synthesise(out, spk, {"test": pool}, utterances_per_speaker, progress=progress)
    return {"test": counts["test"]}


def write_speakers_txt(path: Path, speakers: list[Speaker], utterances: int) -> None:
    """SPEAKERS.TXT in LibriSpeech's pipe-separated format, naming each synthetic voice."""
    rows = [";ID  |SEX| SUBSET | UTTERANCES | NAME (espeak voice, rate, pitch, range)"]
    for s in speakers:
        v = s.voice
        rows.append(f"{s.speaker_id:<5}| {s.sex} | {s.split:<6} | {utterances:<10} | "
                    f"{v.name} rate={v.rate} pitch={v.pitch} range={v.range}")
    path.write_text("\n".join(rows) + "\n")


# ---- LibriSpeech-shaped corpus: real-length utterances for rehearsing the real job -------------------------

#: train-clean-100's utterance lengths, roughly: a few short ones, most between 10 and 17 s, a tail to ~25 s
#: (mean about 12.7 s). test-clean's segmentation allows up to 35 s; its longest utterances get that tail.
LIBRISPEECH_PROFILE = {"short": (0.12, 1.0, 10.0), "main": (0.84, 13.4, 1.8, 10.0, 17.5), "long": (0.04, 17.5, 24.5)}
TEST_TAIL_SECONDS = (30.0, 35.0)
PAUSE_SECONDS = 0.15


def librispeech_durations(n: int, rng: np.random.Generator, *, longest: tuple[float, float] | None = None
                          ) -> np.ndarray:
    """`n` target utterance lengths drawn like train-clean-100's; `longest` makes the last two that long."""
    p_short, lo, hi = LIBRISPEECH_PROFILE["short"]
    p_main, mean, std, main_lo, main_hi = LIBRISPEECH_PROFILE["main"]
    _, long_lo, long_hi = LIBRISPEECH_PROFILE["long"]
    kind = rng.choice(3, size=n, p=[p_short, p_main, 1 - p_short - p_main])
    out = np.where(kind == 0, rng.uniform(lo, hi, n),
                   np.where(kind == 1, np.clip(rng.normal(mean, std, n), main_lo, main_hi),
                            rng.uniform(long_lo, long_hi, n)))
    if longest is not None and n >= 2:
        out[-2:] = rng.uniform(*longest, 2)
    return out


def join_sentences(engine: Espeak, voice: Voice, target: float, rng: random.Random) -> tuple[np.ndarray, str]:
    """Sentences of one voice, 0.15 s apart, until the audio reaches `target` seconds (at least one sentence)."""
    pieces, words = [], []
    seconds = 0.0
    pause = np.zeros(int(PAUSE_SECONDS * 16000), np.float32)
    while not pieces or seconds < target:
        text = make_sentence(rng)
        audio = to_16k(engine.synthesize(text.lower(), voice), engine.sample_rate)
        if pieces and seconds + audio.size / 16000 > target + 1.5:
            break  # keep within about a second and a half of the target
        pieces += [pause, audio] if pieces else [audio]
        words.append(text)
        seconds += (pause.size if len(pieces) > 1 else 0) / 16000 + audio.size / 16000
    return np.concatenate(pieces), " ".join(words)


def build_librispeech_like(out: str | Path, *, hours: float = 1.0, speakers: int = 16, seed: int = 0,
                           progress: bool = True) -> dict[str, int]:
    """A corpus shaped like train-clean-100 (`hours` of train) plus dev and test of a tenth each, whose test
    split also holds utterances of 30-35 s like test-clean's longest; LibriSpeech layout, espeak voices."""
    from tqdm.auto import tqdm

    out = Path(out)
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    spk = make_speakers(speakers, rng)
    engine = Espeak.get()
    mean = float(librispeech_durations(10_000, np.random.default_rng(seed)).mean())
    budget = {"train": hours * 3600, "dev": hours * 360, "test": hours * 360}
    counts = {s: 0 for s in SPLITS}
    bar = tqdm(total=sum(budget.values()), desc="synthesising", unit="audio-s", disable=not progress)
    for split in SPLITS:
        voices = [s for s in spk if s.split == split]
        n = max(2, int(round(budget[split] / mean)))
        targets = librispeech_durations(n, nprng, longest=TEST_TAIL_SECONDS if split == "test" else None)
        lines: dict[Speaker, list[str]] = {s: [] for s in voices}
        for k, target in enumerate(targets):
            speaker = voices[k % len(voices)]
            audio, text = join_sentences(engine, speaker.voice, float(target), rng)
            chapter_dir = out / split / str(speaker.speaker_id) / str(speaker.chapter_id)
            chapter_dir.mkdir(parents=True, exist_ok=True)
            utt = f"{speaker.speaker_id}-{speaker.chapter_id}-{len(lines[speaker]):04d}"
            sf.write(str(chapter_dir / f"{utt}.flac"), audio, 16000, subtype="PCM_16", format="FLAC")
            lines[speaker].append(f"{utt} {text}\n")
            counts[split] += 1
            bar.update(audio.size / 16000)
        for speaker, rows in lines.items():
            if rows:
                (out / split / str(speaker.speaker_id) / str(speaker.chapter_id) /
                 f"{speaker.speaker_id}-{speaker.chapter_id}.trans.txt").write_text("".join(rows))
    bar.close()
    write_speakers_txt(out / "SPEAKERS.TXT", spk, 0)
    return counts
