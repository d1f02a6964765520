"""Typed text -> speech for the app, in the text's own language where espeak-ng has a voice for it.

The language is chosen from the writing system of the text's letters (Unicode script names):
Chinese characters get espeak-ng's Mandarin voice, Arabic letters its Arabic voice, and so on;
kana anywhere make it Japanese. Latin-script text keeps the chosen English voice (the script cannot
tell English from French). Emoji and other symbols are not read out. A script with no espeak-ng
voice is refused with one message naming it. Lip-sync was learned from English speech only: every
non-English choice carries a note saying so.
"""
from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .errors import InputError

# Unicode script (first word of a letter's name) -> (espeak-ng voice, language name)
SCRIPT_VOICES = {
    "CJK": ("cmn", "Chinese (Mandarin)"), "HIRAGANA": ("ja", "Japanese"), "KATAKANA": ("ja", "Japanese"),
    "HANGUL": ("ko", "Korean"), "ARABIC": ("ar", "Arabic"), "CYRILLIC": ("ru", "Russian"),
    "DEVANAGARI": ("hi", "Hindi"), "GREEK": ("el", "Greek"), "HEBREW": ("he", "Hebrew"), "THAI": ("th", "Thai"),
    "BENGALI": ("bn", "Bengali"), "TAMIL": ("ta", "Tamil"), "TELUGU": ("te", "Telugu"), "KANNADA": ("kn", "Kannada"),
    "MALAYALAM": ("ml", "Malayalam"), "GUJARATI": ("gu", "Gujarati"), "GURMUKHI": ("pa", "Punjabi"),
    "GEORGIAN": ("ka", "Georgian"), "ARMENIAN": ("hy", "Armenian"), "ETHIOPIC": ("am", "Amharic"),
    "SINHALA": ("si", "Sinhala"), "MYANMAR": ("my", "Burmese"),
}
ENGLISH_ONLY_NOTE = ("Lip-sync was learned from English speech only: expect weaker lip-sync for {language}.")


@dataclass(frozen=True)
class VoiceChoice:
    voice: str  # espeak-ng voice name, e.g. "cmn+f2"
    language: str  # e.g. "English", "Chinese (Mandarin)"
    text: str  # what will be spoken (symbols removed)

    @property
    def note(self) -> str | None:
        """The warning for a visitor when the language is not English, else None."""
        return None if self.language == "English" else ENGLISH_ONLY_NOTE.format(language=self.language)


def script_of(ch: str) -> str | None:
    """The Unicode script of a letter (first word of its name: LATIN, CJK, ARABIC...), None otherwise."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if name else None


def choose_voice(text: str, voice: str = "en-us+f2") -> VoiceChoice:
    """The voice for `text`: the English `voice` for Latin script, else espeak-ng's voice of the
    text's main script with `voice`'s variant (e.g. "+f2"). Raises `InputError` for empty text or a
    script without a voice."""
    kept = "".join(ch for ch in text if not unicodedata.category(ch).startswith(("S", "C")) or ch in "\n\t")
    scripts = Counter(s for s in map(script_of, kept) if s)
    if not kept.strip() or not scripts:
        raise InputError("The text has no words to speak (emoji and symbols are not read out). Type a sentence.")
    if scripts["HIRAGANA"] or scripts["KATAKANA"]:
        main = "HIRAGANA"
    else:
        main = scripts.most_common(1)[0][0]
    if main == "LATIN":
        return VoiceChoice(voice, "English", kept)
    if main not in SCRIPT_VOICES:
        raise InputError(f"The text is written in {main.title()} script, which the built-in voice cannot speak. "
                         "Upload a recording instead, or type English text.")
    base, language = SCRIPT_VOICES[main]
    variant = voice.split("+", 1)[1] if "+" in voice else ""
    return VoiceChoice(f"{base}+{variant}" if variant else base, language, kept)


def estimate_seconds(text: str, rate: int) -> float:
    """Speaking time of `text` at `rate` words per minute (a CJK character counts as a word)."""
    words = len(text.split()) + sum(1 for ch in text if script_of(ch) in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))
    return words / max(rate, 1) * 60


def speak_text(text: str | None, voice: str, rate: int) -> tuple[np.ndarray, VoiceChoice]:
    """Typed text -> (16-kHz mono speech, the voice used). Raises `InputError` with one message."""
    from .data import tts

    if not text or not text.strip():
        raise InputError("The text box is empty. Type a sentence for the voice to speak.")
    choice = choose_voice(text, voice)
    try:
        return tts.speak(choice.text, voice=choice.voice, rate=rate), choice
    except ValueError as e:  # unknown voice name
        raise InputError(f"Cannot speak with voice {choice.voice!r}: {e}") from None
