"""Data augmentation (issue 12): each transform against a NumPy expectation, determinism in (seed, epoch,
utterance), training-only use with exact resume, the caches left clean, and the unseen-voices test set."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from ds2_helpers import augment as aug
from ds2_helpers.config import AugmentConfig, ModelConfig, ParameterError, TrainConfig, from_dict, to_dict
from ds2_helpers.dataset import SpeechData

SR = 16000
ALL = AugmentConfig.of("speed,gain,noise,specaugment")


def tone(freq: float = 440.0, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.argmax(spectrum)) * SR / audio.size


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


# ---- transforms ---------------------------------------------------------------------------------------------
def test_gain_scales_the_rms_by_the_decibels():
    audio = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    for db in (-6.0, 0.0, 3.5):
        assert 20 * math.log10(rms(aug.gain(audio, db)) / rms(audio)) == pytest.approx(db, abs=1e-4)


def test_noise_is_added_at_the_drawn_snr():
    audio = tone()
    for snr in (5.0, 20.0):
        noisy = aug.add_noise(audio, snr, np.random.default_rng(1))
        noise = noisy.astype(np.float64) - audio
        assert 10 * math.log10(np.mean(audio.astype(np.float64) ** 2) / np.mean(noise ** 2)) == \
            pytest.approx(snr, abs=0.01)
        assert abs(np.corrcoef(noise, audio)[0, 1]) < 0.05  # noise, not a copy of the signal
    np.testing.assert_array_equal(aug.add_noise(audio, 10, np.random.default_rng(2)),
                                  aug.add_noise(audio, 10, np.random.default_rng(2)))
    silent = np.zeros(100, np.float32)
    np.testing.assert_array_equal(aug.add_noise(silent, 10, np.random.default_rng(0)), silent)


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_changes_length_and_pitch_together(speed):
    audio = tone(440.0)
    fast = aug.speed_perturb(audio, speed)
    assert fast.size == aug.speed_length(audio.size, speed) == math.ceil(audio.size / speed)
    assert peak_hz(fast) == pytest.approx(440.0 * speed, abs=1.5)  # pitch x speed, like sox `speed`
    assert rms(fast) == pytest.approx(rms(audio), rel=0.02)
    assert aug.speed_perturb(audio, 1.0) is audio


def test_masks_fill_exactly_the_chosen_bands_with_the_mean():
    feats = (np.random.default_rng(3).standard_normal((161, 300)) + 2.0).astype(np.float32)  # mean 2, not 0
    cfg = AugmentConfig(freq_masks=2, freq_width=27, time_masks=2, time_width=100)
    freq, time = aug.mask_bands(161, 300, cfg, np.random.default_rng(4))
    assert len(freq) == 2 and len(time) == 2
    assert all(0 <= w <= 27 and 0 <= s <= 161 - w for s, w in freq)
    assert all(0 <= w <= 60 and 0 <= s <= 300 - w for s, w in time)  # at most 20 % of the frames
    before = feats.copy()
    masked = aug.spec_mask(feats, cfg, np.random.default_rng(4))
    np.testing.assert_array_equal(feats, before)  # the (possibly cached) input is never changed
    chosen = np.zeros(feats.shape, bool)
    for s, w in freq:
        chosen[s: s + w, :] = True
    for s, w in time:
        chosen[:, s: s + w] = True
    assert chosen.any()
    assert (masked[chosen] == np.float32(feats.mean())).all()
    np.testing.assert_array_equal(masked[~chosen], feats[~chosen])


# ---- determinism --------------------------------------------------------------------------------------------
def test_same_seed_epoch_and_utterance_give_the_same_augmentation():
    audio = tone(300.0, 1.5)
    cfg = AugmentConfig(speeds=(0.9, 1.1), gain_db=(-6, 6), noise_snr_db=(10, 30), noise_prob=1.0)

    def run(seed, epoch, uid):
        out, _ = aug.augment_waveform(audio, cfg, aug.utterance_rng(seed, epoch, uid))
        return out

    np.testing.assert_array_equal(run(1, 0, "19-198-0001"), run(1, 0, "19-198-0001"))
    draws = {aug.augment_waveform(audio, cfg, aug.utterance_rng(1, e, "u"))[1] for e in range(8)}
    assert len(draws) == 8  # another epoch, another version of the utterance
    assert not np.array_equal(run(1, 0, "u"), run(1, 1, "u"))
    assert not np.array_equal(run(1, 0, "a")[:1000], run(1, 0, "b")[:1000])
    assert not np.array_equal(run(1, 0, "u")[:1000], run(2, 0, "u")[:1000])


def test_the_generator_does_not_depend_on_the_process():
    code = ("from ds2_helpers.augment import utterance_rng; "
            "print(utterance_rng(1234, 3, '1000-5000-0007').integers(0, 2**62, 4).tolist())")
    mine = aug.utterance_rng(1234, 3, "1000-5000-0007").integers(0, 2**62, 4).tolist()
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert json.loads(out.stdout) == mine


def test_a_speed_up_ctc_cannot_fit_falls_back_to_speed_one():
    audio = tone()
    cfg = AugmentConfig(speeds=(1.1,))
    out, drawn = aug.augment_waveform(audio, cfg, np.random.default_rng(0), fits=lambda n: n >= audio.size)
    assert drawn.fell_back and drawn.speed == 1.0 and out.size == audio.size
    out, drawn = aug.augment_waveform(audio, cfg, np.random.default_rng(0), fits=lambda n: True)
    assert not drawn.fell_back and out.size == math.ceil(audio.size / 1.1)


# ---- configuration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,words", [
    ({"speeds": ()}, "speeds"), ({"speeds": (0.9, 3.0)}, "between 0.5 and 2"),
    ({"gain_db": (6.0, -6.0)}, "low <= high"), ({"noise_snr_db": (10.0,)}, "range"),
    ({"noise_prob": 1.5}, "noise_prob"), ({"freq_masks": -1}, "0 or more"), ({"time_max_fraction": 2.0}, "share")])
def test_bad_augment_settings_are_refused(kwargs, words):
    with pytest.raises(ParameterError, match=words):
        AugmentConfig(**kwargs)


def test_kinds_defaults_and_round_trip_through_checkpoint_metadata():
    assert not AugmentConfig().enabled and TrainConfig().augment == AugmentConfig()
    assert AugmentConfig.of("") == AugmentConfig.of(None) == AugmentConfig()
    assert ALL.kinds == ["speed", "gain", "noise", "specaugment"] and ALL.max_stretch == pytest.approx(1 / 0.9)
    assert AugmentConfig.of("specaugment").spectral and not AugmentConfig.of("specaugment").waveform
    with pytest.raises(ParameterError, match="'pitch': unknown"):
        AugmentConfig.of("speed,pitch")
    cfg = TrainConfig(seed=5, augment=ALL)
    assert from_dict(TrainConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_resume_identity_includes_the_augmentation():
    from ds2_helpers.run_folder import differences, identity

    def ident(train):
        return identity({}, train, {}, {})

    off, on = to_dict(TrainConfig()), to_dict(TrainConfig(augment=AugmentConfig.of("speed")))
    saved = json.loads(json.dumps(off))  # what a checkpoint holds: tuples became lists
    assert differences(ident(saved), ident(off)) == []
    assert any(d.startswith("train.augment.speeds: checkpoint None") for d in differences(ident(saved), ident(on)))
    old = {k: v for k, v in saved.items() if k != "augment"}  # written before augmentation existed: trained without
    assert differences(ident(old), ident(off)) == [] and differences(ident(old), ident(on))


# ---- the dataset and training ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tiny_corpus):
    return SpeechData(tiny_corpus / "train.csv", limit=12)


def test_waveform_augmentation_bypasses_the_caches(tiny_corpus, tmp_path):
    folder = tmp_path / "cache"
    data = SpeechData(tiny_corpus / "train.csv", limit=2, cache=folder)
    waveform = AugmentConfig(gain_db=(3.0, 3.0))
    a = data.augmented_features(0, waveform, seed=1, epoch=0)
    assert not folder.exists() or not any(folder.rglob("*.npy"))  # nothing augmented is stored
    plain = data.features(0)
    assert a.shape == plain.shape and not np.array_equal(a, plain)
    assert len(list(folder.rglob("*.npy"))) == 1 and data.disk.misses == 1
    masks = AugmentConfig.of("specaugment")
    m = data.augmented_features(0, masks, seed=1, epoch=0)
    assert data.disk.hits == 1 and data.disk.misses == 1  # SpecAugment alone starts from the cached spectrogram
    np.testing.assert_array_equal(data.features(0), plain)  # ... and masks a copy of it
    assert not np.array_equal(m, plain)
    ram = SpeechData(tiny_corpus / "train.csv", limit=2, cache=True)
    ram.augmented_features(1, waveform, seed=1, epoch=0)
    assert ram._features == {}


def test_speed_changes_frames_and_keeps_ctc_alignable(data):
    from ds2_helpers.dataset import ctc_min_frames
    from ds2_helpers.model import output_lengths

    i = 0
    frames = data.features(i).shape[1]
    slow = data.augmented_features(i, AugmentConfig(speeds=(0.9,)), seed=1, epoch=0)
    assert slow.shape[1] == pytest.approx(frames / 0.9, abs=2)
    # a transcript that needs every output frame at speed 1: a speed-up would leave CTC too few
    have = int(output_lengths(frames))
    tight = data.frame.iloc[[i]].copy()
    tight.loc[:, "transcript"] = ("AB" * have)[:have]
    one = SpeechData(tight.reset_index(drop=True))
    assert ctc_min_frames(one.labels[0]) == have
    fast = one.augmented_features(0, AugmentConfig(speeds=(1.1,)), seed=1, epoch=0)
    assert fast.shape[1] == frames and one.speed_fallbacks == 1


def test_batch_seconds_budget_counts_the_slowest_speed(data):
    from ds2_helpers.config import SpectConfig
    from ds2_helpers.train import epoch_batches

    plain = TrainConfig(batch_size=12, batch_seconds=12.0)
    speed = TrainConfig(batch_size=12, batch_seconds=12.0, augment=AugmentConfig.of("speed"))
    for cfg in (plain, speed):
        for b in epoch_batches(cfg, SpectConfig(), data, 0, pad_multiple=1):
            longest = max(data.durations[i] for i in b) * cfg.augment.max_stretch
            assert len(b) == 1 or len(b) * longest <= 12.0 + 0.01 * len(b)
    assert len(epoch_batches(speed, SpectConfig(), data, 0)) >= len(epoch_batches(plain, SpectConfig(), data, 0))


TINY = ModelConfig(conv_channels=2, hidden_size=24, hidden_layers=1)


def tiny_cfg(**kw):
    base = dict(learning_rate=3e-3, batch_size=4, epochs=2, mode="pynative", save_every=2, keep_last=3, seed=7,
                augment=ALL)
    base.update(kw)
    return TrainConfig(**base)


def test_augmented_training_resumes_with_the_same_losses(data, tmp_path):
    from ds2_helpers.train import Trainer

    # learning_anneal 1: in PyNative mode a learning rate set after the first step does not take effect (MindSpore
    # 2.10 CPU), so an uninterrupted run keeps epoch 0's rate while a resumed one starts with the annealed one
    data = SpeechData(data.frame.iloc[:8])  # batches of 4: 2 steps per epoch, 4 in all
    straight = Trainer(TINY, tiny_cfg(learning_anneal=1.0), tmp_path / "a", rank=0, world=1)
    straight.fit(data, progress=False)  # checkpoints at steps 2 (end of epoch 1) and 4
    losses = [r["loss"] for r in straight.state.history]
    assert len(losses) == 4 and np.isfinite(losses).all()
    resumed = Trainer(TINY, tiny_cfg(learning_anneal=1.0), tmp_path / "b", rank=0, world=1)
    assert resumed.resume(tmp_path / "a" / "ds2-step0000002.ckpt") and resumed.state.global_step == 2
    resumed.fit(data, progress=False)  # epoch 2: other augmentations than epoch 1's, the same as `straight`'s
    np.testing.assert_allclose([r["loss"] for r in resumed.state.history], losses[2:], rtol=1e-5)
    plain = Trainer(TINY, tiny_cfg(learning_anneal=1.0, augment=AugmentConfig()), tmp_path / "c", rank=0, world=1)
    plain.fit(data, max_steps=1, progress=False)
    assert plain.state.history[0]["loss"] != pytest.approx(losses[0], rel=1e-4)  # augmentation did change step 1


def test_evaluation_never_augments(data, tmp_path, monkeypatch):
    from ds2_helpers.evaluate import evaluate
    from ds2_helpers.train import Trainer

    def refuse(*args, **kwargs):
        raise AssertionError("augmentation called")

    monkeypatch.setattr(aug, "augment_waveform", refuse)
    monkeypatch.setattr(aug, "augment_features", refuse)
    trainer = Trainer(TINY, tiny_cfg(epochs=1), tmp_path, rank=0, world=1)
    with pytest.raises(AssertionError, match="augmentation called"):  # training does reach it ...
        trainer.fit(data, max_steps=1, progress=False)
    _, summary = evaluate(trainer.net, data, batch_size=4)  # ... evaluation does not
    assert summary["utterances"] == len(data)


# ---- unseen voices --------------------------------------------------------------------------------------------
def test_unseen_voices_are_disjoint_from_every_corpus_voice_and_sentence(tmp_path):
    from ds2_helpers import minicorpus
    from ds2_helpers.librispeech import build_manifest, read_manifest

    variants = {s.voice.name.split("+")[1] for s in minicorpus.unseen_speakers(16)}
    assert len(variants) == 16 and variants.isdisjoint(minicorpus.VARIANTS)
    spk, test_sentences, other = minicorpus.plan_minicorpus()
    mini_voices = {s.voice.name for s in spk}
    counts = minicorpus.build_unseen_voices(tmp_path / "u", speakers=3, utterances_per_speaker=2, progress=False)
    assert counts == {"test": 6}
    build_manifest(tmp_path / "u", "test", tmp_path / "u.csv", strict=True)
    frame = read_manifest(tmp_path / "u.csv")
    assert len(frame) == 6 and frame.speaker.nunique() == 3
    assert set(frame.speaker).isdisjoint(s.speaker_id for s in spk)
    assert set(frame.transcript).isdisjoint(set(test_sentences) | set(other))
    names = [line.split("|")[4].split()[0] for line in (tmp_path / "u" / "SPEAKERS.TXT").read_text().splitlines()[1:]]
    assert len(names) == 3 and not set(names) & mini_voices
    again = minicorpus.build_unseen_voices(tmp_path / "v", speakers=3, utterances_per_speaker=2, progress=False)
    assert again == counts and (tmp_path / "v" / "SPEAKERS.TXT").read_text() == \
        (tmp_path / "u" / "SPEAKERS.TXT").read_text()
    for trans in sorted((tmp_path / "u").rglob("*.trans.txt")):
        assert trans.read_bytes() == (tmp_path / "v" / trans.relative_to(tmp_path / "u")).read_bytes()
    import soundfile as sf

    for flac in sorted((tmp_path / "u").rglob("*.flac")):  # espeak keeps a little state between calls
        other = tmp_path / "v" / flac.relative_to(tmp_path / "u")
        assert abs(sf.info(str(flac)).frames / sf.info(str(other)).frames - 1) < 0.02

