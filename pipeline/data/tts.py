"""espeak-ng speech synthesis with phoneme timings, through ctypes.

How it works: the PyPI package ``espeakng-loader`` ships ``libespeak-ng.so`` and its
``espeak-ng-data`` directory. We load the library with ctypes and call
``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, espeakINITIALIZE_PHONEME_EVENTS)``.
In synchronous mode ``espeak_Synth`` returns only when the text is fully spoken, and while it
runs the library calls our ``espeak_SetSynthCallback`` function with chunks of 16-bit samples
(22050 Hz) plus an array of events ending in ``espeakEVENT_LIST_TERMINATED``. Because the
phoneme-events option is on, the array holds one ``espeakEVENT_PHONEME`` event per phoneme
with its start (``audio_position``, in ms from the start of the ``espeak_Synth`` call) and its
espeak mnemonic packed in ``id.string`` (up to 8 bytes, not always NUL-terminated).

Each sentence is synthesised in its own call, so its phoneme times are relative to that
sentence's audio; ``speak_for`` draws a voice, rate, pitch and random sentences (from a built-in
list of ~400 common words), concatenates them with silent pauses, shifts the times and resamples
22050 Hz -> 16 kHz with ``scipy.signal.resample_poly`` (320/441).

The library keeps synthesis state in C statics, so the same text would sound slightly different
depending on what was said before; each clip therefore speaks through a private, freshly loaded
copy of the library (``_open_private_library``), which makes clips deterministic given their seed.
One engine must not be used from two threads at once.
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from scipy.signal import resample_poly

ESPEAK_RATE = 22050
from ..config import SAMPLE_RATE  # noqa: E402 - what the rest of the project (Whisper) consumes

# Constants from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_POS_CHARACTER, _CHARS_UTF8 = 1, 1

# Voice variants (files in espeak-ng-data/voices/!v) we draw from; all exist in the shipped data.
MALE_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]
FEMALE_VARIANTS = ["f1", "f2", "f3", "f4"]
BASE_VOICES = ["en-us", "en"]


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass
class Phoneme:
    """One spoken phoneme: espeak mnemonic and its span in seconds."""

    symbol: str
    start: float
    end: float


@dataclass
class Speech:
    """Synthesised speech: 16 kHz float32 audio and the phoneme timeline."""

    audio: np.ndarray
    sample_rate: int
    phonemes: list[Phoneme]


class _Engine:
    """A private, freshly loaded espeak-ng instance (see ``_open_private_library``).

    Use as a context manager: the library is unloaded on exit, so the next engine starts from
    the library's pristine global state.
    """

    def __enter__(self):
        import espeakng_loader  # light, but only needed when speech is made

        self.lib = _open_private_library(espeakng_loader.get_library_path())
        data_path = str(espeakng_loader.get_data_path())
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(),
                                          _INIT_PHONEME_EVENTS)
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"espeak_Initialize failed or gave {rate} Hz (expected 22050)")
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(0))  # noise for fricatives: fixed seed
        self._cb = _CALLBACK(self._collect)  # keep a reference: C holds only the pointer
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                          ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                          ctypes.c_void_p, ctypes.c_void_p]
        return self

    def __exit__(self, *exc):
        self.lib.espeak_Terminate()
        handle, self.lib = self.lib._handle, None
        _ctypes.dlclose(handle)

    def _collect(self, wav, n, events):
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                sym = bytes(ev.id.string).split(b"\0")[0].decode("ascii", "replace")
                self._events.append((ev.audio_position, sym))
            i += 1
        return 0

    def say(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int = 50):
        """Speak one sentence; return (int16 samples at 22050 Hz, [(ms, mnemonic), ...])."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self.lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with error {err}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, list(self._events)


def _open_private_library(path: str) -> ctypes.CDLL:
    """dlopen a private copy of libespeak-ng so that its global state is fresh.

    espeak-ng keeps synthesis state in C statics across calls (e.g. the pitch-flutter index
    and pitch continuity), so the same text gives slightly different samples and timings
    depending on what was spoken before. Loading a uniquely named copy (deleted at once; the
    mapping stays valid) and unloading it afterwards makes each clip depend only on its seed,
    even if another part of the program has the shared library loaded. Cost: ~5 ms.
    """
    fd, tmp = tempfile.mkstemp(prefix="espeak-ng-", suffix=".so")
    try:
        with os.fdopen(fd, "wb") as dst, open(path, "rb") as src:
            shutil.copyfileobj(src, dst)
        return ctypes.CDLL(tmp, mode=ctypes.RTLD_LOCAL)
    finally:
        os.remove(tmp)


def _phonemes_from_events(events, duration_s: float, offset_s: float) -> list[Phoneme]:
    """Turn (start ms, symbol) events into spans; each phoneme lasts until the next starts."""
    out = []
    for k, (ms, sym) in enumerate(events):
        start = ms / 1000.0
        end = events[k + 1][0] / 1000.0 if k + 1 < len(events) else duration_s
        if end > start and sym:
            out.append(Phoneme(sym, offset_s + start, offset_s + min(end, duration_s)))
    return out


WORDS = list(dict.fromkeys("""
the a an and but or so if when then because while after before as than that this these those
i you he she we they it me him her us them my your his our their its who what where why how
is are was were be been being have has had do does did will would can could should may might
must shall go goes went come came see saw look looked make made take took give gave get got
know knew think thought say said tell told find found want need like love feel felt try leave
call keep let begin seem help show hear play run move live believe bring happen write sit stand
lose pay meet include continue set learn change lead understand watch follow stop create speak
read spend grow open walk win offer remember consider appear buy wait serve die send expect build
stay fall cut reach kill remain suggest raise pass sell require report decide pull carry break
time year people way day man woman child world life hand part place case week company system
program question work government number night point home water room mother father area money
story fact month lot right study book eye job word business issue side kind head house service
friend power hour game line end member law car city community name president team minute idea
kid body information back parent face others level office door health person art war history
party result morning reason research girl guy moment air teacher force education food music
good new first last long great little own other old big high different small large next early
young important few public bad same able blue green red warm cold bright quiet happy simple
clear open full sure free easy hard real best better true whole strong close late dark light
very really just also only still even never always often again here there now today tomorrow
yesterday soon maybe perhaps almost quite rather together away down up out over under about
around into through across between behind beyond without within along toward upon during
river mountain garden window table paper pencil coffee bread apple summer winter spring autumn
ocean forest island bridge market station train ship plane letter picture voice smile dream
story song dinner breakfast lunch chair village street kitchen doctor student problem answer
beautiful wonderful careful gentle simple famous modern ancient special perfect tiny huge
""".split()))  # de-duplicated, order kept
_OPENERS = ["well", "so", "yes", "no", "oh", "okay", "now", "look", "listen", "honestly"]


def make_sentence(rng: np.random.Generator, max_words: int = 12) -> str:
    """A random English-looking sentence of 3..max_words common words.

    Grammar is not the point: varied phoneme sequences and natural prosody are. A held-out seed
    gives unseen sentences because length and every word are drawn anew.
    """
    n = int(rng.integers(3, max(4, max_words + 1)))
    words = [str(w) for w in rng.choice(WORDS, size=n)]
    if rng.random() < 0.25:
        words.insert(0, str(rng.choice(_OPENERS)) + ",")
    if n > 6 and rng.random() < 0.4:  # a comma gives a short mid-sentence pause
        k = int(rng.integers(2, n - 2))
        words[k] += ","
    text = " ".join(words)
    return text[0].upper() + text[1:] + str(rng.choice([".", ".", ".", "?", "!"]))


def sample_voice(rng: np.random.Generator) -> tuple[str, int, int]:
    """(voice name, rate in words per minute, pitch 0..99) for one clip."""
    variants = MALE_VARIANTS if rng.random() < 0.5 else FEMALE_VARIANTS
    voice = f"{rng.choice(BASE_VOICES)}+{rng.choice(variants)}"
    return voice, int(rng.integers(130, 211)), int(rng.integers(25, 76))


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * ESPEAK_RATE)), np.int16)


def speak_for(rng: np.random.Generator, seconds: float) -> tuple[Speech, dict]:
    """Speech that fills ``seconds``: silent lead, sentences with pauses, a silent tail.

    Sentences are added while they fit before the tail; after a sentence that does not fit we
    retry with shorter ones (3 tries). Returns the speech (16 kHz audio of exactly
    ``round(seconds * 16000)`` samples) and metadata (voice, rate, pitch, sentences).
    """
    voice, rate, pitch = sample_voice(rng)
    lead, tail = rng.uniform(0.15, 0.6), rng.uniform(0.25, 0.7)
    pieces, phonemes, said = [_silence(lead)], [], []
    t, misses, max_words = len(pieces[0]) / ESPEAK_RATE, 0, 12
    with _Engine() as eng:
        while misses < 3 and t < seconds - tail:
            text = make_sentence(rng, max_words)
            audio, events = eng.say(text, voice, rate, pitch)
            dur = len(audio) / ESPEAK_RATE
            if t + dur > seconds - tail and said:  # does not fit: try a shorter one
                misses, max_words = misses + 1, max(3, max_words // 2)
                continue
            phonemes += _phonemes_from_events(events, dur, t)
            pieces += [audio, _silence(rng.uniform(0.25, 0.8))]
            t += dur + len(pieces[-1]) / ESPEAK_RATE
            said.append(text)
    pcm = np.concatenate(pieces).astype(np.float32) / 32768.0
    audio16 = resample_poly(pcm, 320, 441).astype(np.float32)  # 22050 * 320/441 = 16000
    n = int(round(seconds * SAMPLE_RATE))
    audio16 = np.pad(audio16, (0, max(0, n - len(audio16))))[:n]  # exact clip length
    meta = {"voice": voice, "rate": rate, "pitch": pitch, "sentences": said,
            "text": " ".join(said)}
    return Speech(np.clip(audio16, -1.0, 1.0), SAMPLE_RATE, phonemes), meta


def speak(text: str, voice: str = "en-us+f2", rate: int = 165, pitch: int = 50) -> np.ndarray:
    """Speak ``text`` (one or more sentences) with espeak-ng -> 16 kHz float32 mono samples.

    ``voice`` is a base voice plus a variant (e.g. ``en-us+m3``), ``rate`` in words per minute,
    ``pitch`` 0..99. A private engine per call (see ``_Engine``), so this is safe to call from
    several threads and gives the same samples for the same arguments.
    """
    if not text or not text.strip():
        raise ValueError("there is no text to speak")
    with _Engine() as eng:
        pcm, _ = eng.say(text.strip(), voice, rate, pitch)
    audio16 = resample_poly(pcm.astype(np.float32) / 32768.0, 320, 441).astype(np.float32)
    return np.clip(audio16, -1.0, 1.0)
