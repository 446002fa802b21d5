"""Speech synthesis with the libespeak-ng shipped by the `espeakng-loader` wheel (no system package)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_CHARS_UTF8 = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class SynthesisError(RuntimeError):
    """espeak-ng could not be loaded or refused a voice."""


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: espeak voice name (language+variant), rate in words/min, pitch and range 0-100."""

    name: str
    rate: int = 165
    pitch: int = 50
    range: int = 50


class Espeak:
    """A process-wide espeak-ng engine in synchronous mode, collecting samples through a callback."""

    _instance: "Espeak | None" = None

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise SynthesisError("espeakng-loader is not installed: run `make workbook` "
                                 "or `pip install espeakng-loader`") from exc
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, ctypes.c_char_p(data), 0)
        if self.sample_rate <= 0:
            raise SynthesisError(f"espeak_Initialize failed with data path {data.decode()}")
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, _events):
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _CALLBACK(collect)  # keep a reference: ctypes callbacks must outlive the C side
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]

    @classmethod
    def get(cls) -> "Espeak":
        """The shared engine (espeak-ng keeps global state, so one per process)."""
        if cls._instance is None:
            cls._instance = Espeak()
        return cls._instance

    def set_voice(self, voice: Voice) -> None:
        """Select a voice; a name espeak does not know raises instead of silently using the default."""
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise SynthesisError(f"espeak-ng has no voice {voice.name!r} (try 'en+f2' or 'en-gb-x-rp+m7')")
        for key in ("rate", "pitch", "range"):
            self.lib.espeak_SetParameter(_PARAM[key], int(getattr(voice, key)), 0)

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """Speak `text` with `voice`: int16 samples at `self.sample_rate` (22,050 Hz)."""
        self.set_voice(voice)
        self._chunks = []
        raw = text.encode("utf-8") + b"\0"
        rc = self.lib.espeak_Synth(raw, len(raw), 0, 0, 0, _ESPEAK_CHARS_UTF8, None, None)
        if rc != 0:
            raise SynthesisError(f"espeak_Synth returned {rc} for {text!r}")
        if not self._chunks:
            raise SynthesisError(f"espeak-ng produced no audio for {text!r} with {voice.name}")
        return np.concatenate(self._chunks)
