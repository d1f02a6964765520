"""Tiny components built in code (diffusers' get_dummy_components habit): seconds on a CPU."""
import contextlib
import numpy as np
import pytest
import torch

from pipeline.config import DiTConfig, PipelineConfig, SamplingConfig, SpeechConfig, VAEConfig

torch.set_num_threads(2)

SMALL_VAE = dict(
    latent_channels=16, block_out_channels=(8, 8, 16, 16), decoder_block_out_channels=(8, 8, 16, 16),
    layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
    spatio_temporal_scaling=(True, True, True, False), decoder_spatio_temporal_scaling=(True, True, True, False),
    patch_size=4, patch_size_t=1, timestep_conditioning=False, encoder_causal=True, decoder_causal=False,
)


def small_config(**sampling) -> PipelineConfig:
    return PipelineConfig(
        preset="test", height=64, width=64, max_seconds=20.0,
        vae=VAEConfig(kwargs=dict(SMALL_VAE)),
        speech=SpeechConfig(context_frames=1, hidden_dim=16, num_tokens=2, code_dim=8),
        dit=DiTConfig(in_channels=16, hidden_size=32, depth=1, num_heads=2, audio_dim=8, rope_axes=(4, 4, 8)),
        sampling=SamplingConfig(num_inference_steps=2, clip_latent_frames=3, **sampling),
    )


def randomize(module, std=0.2, seed=0):
    """Give every parameter random values (zero-initialised layers would hide behaviour)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture(scope="session")
def small_pipe():
    from pipeline.pipeline import TalkingHeadPipeline

    pipe = TalkingHeadPipeline.from_config(small_config(), seed=0)
    randomize(pipe.dit, seed=1)
    return pipe


@pytest.fixture(scope="session")
def speech_wav():
    """A real spoken sentence (espeak-ng), 16 kHz mono."""
    import soundfile as sf

    from pipeline.media import resample

    wav, sr = sf.read("tests/data/speech_hello.wav", dtype="float32")
    return resample(wav, sr)


@pytest.fixture
def portrait():
    rng = np.random.default_rng(0)
    return (rng.random((90, 70, 3)) * 255).astype(np.uint8)


# ---------------------------------------------------------------- servers and the browser
CHROMIUM = "/usr/bin/chromium"  # Debian's build; Playwright never downloads one
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(demo):
    """Launch a gradio Blocks on 127.0.0.1 for the duration of the block; yields its URL."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright (skipped where Debian's chromium is not installed)."""
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser test needs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny ops gain nothing from a second thread, and on a busy
    machine its barriers cost ~30x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trained_looking(refiner, seed: int = 0):
    """A `refiner.FrameRefiner` whose zero-initialised output layer gets random weights, so it changes
    what it sees; in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        refiner.conv_out.weight.copy_(torch.randn(refiner.conv_out.weight.shape, generator=g) * 0.05)
    return refiner.eval()
