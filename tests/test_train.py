"""Training plumbing: two processes (gloo, CPU) end with identical parameters; checkpoints resume."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.train.common import load_checkpoint, save_checkpoint


def _fake_clips(root, n=3, frames=41, seed=0):
    """Clip folders with what the SpeechAE trainer reads: gt.npz, frames.npz, cached Whisper features."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"clip_{i:05d}"
        d.mkdir(parents=True)
        np.savez(d / "frames.npz", frames=np.zeros((frames, 8, 8, 3), np.uint8))
        np.savez(d / "gt.npz", openness=rng.random(frames).astype(np.float32))
        save_file({"features": torch.from_numpy(rng.standard_normal((2 * frames, 384)).astype(np.float16))},
                  str(d / "whisper.safetensors"))


@pytest.mark.slow
def test_two_processes_end_with_identical_parameters(tmp_path):
    _fake_clips(tmp_path / "data")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           "-m", "pipeline.train.speech_ae", "--data", str(tmp_path / "data"), "--out", str(out),
           "--steps", "4", "--batch-size", "2", "--frames", "17", "--val-every", "2", "--save-every", "4",
           "--save-rank-params"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # ranks drew different batches, all-reduce keeps them equal
    assert (out / "speech_ae" / "config.json").exists() and (out / "log.csv").exists()


def test_checkpoint_roundtrip_restores_model_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step(), opt.zero_grad()
    save_checkpoint(tmp_path / "ck", model, opt, step=3, extra={"note": "x"})
    assert not list((tmp_path / "ck").glob("*.bin")) and not list((tmp_path / "ck").glob("*.pt"))
    model2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    meta = load_checkpoint(tmp_path / "ck", model2, opt2)
    assert meta["step"] == 3 and meta["extra"] == {"note": "x"}
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (model2, opt2)):  # one more identical step on both
        m(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(model.weight, model2.weight)
    json.loads((tmp_path / "ck" / "state.json").read_text())


def _fake_latent_clips(root, cfg, n=2, n_lat=7, seed=0):
    """Clip folders with what the DiT trainer reads: cached latents, refs, codes and Whisper features."""
    rng = np.random.default_rng(seed)
    c, h, s = cfg.vae.kwargs["latent_channels"], cfg.height // 32, cfg.speech
    randn = lambda *shape: torch.from_numpy(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    for i in range(n):
        d = root / f"clip_{i:05d}"
        d.mkdir(parents=True)
        save_file({"latents": randn(c, n_lat, h, h), "refs": randn(4, c, h, h), "ref_frames": torch.arange(4),
                   "codes": randn(n_lat, s.num_tokens, s.code_dim)}, str(d / "latents.safetensors"))
        frames = 1 + 8 * (n_lat - 1)
        np.savez(d / "frames.npz", frames=np.zeros((frames, 8, 8, 3), np.uint8))
        save_file({"features": randn(2 * frames, 384).half()}, str(d / "whisper.safetensors"))
        np.savez(d / "gt.npz", mouth_box=np.tile(np.array([40, 70, 60, 80], np.int32), (frames, 1)))
        (d / "meta.json").write_text(json.dumps({"size": cfg.height}))


@pytest.mark.parametrize("encoder", ["linear", "scratch"])
@pytest.mark.slow
def test_dit_ablation_runs_export_pipelines_that_generate(tmp_path, encoder):
    """The SpeechAE / ANS ablations train through the same script and export a pipeline that runs."""
    from pipeline.config import get_preset
    from pipeline.pipeline import TalkingHeadPipeline
    from pipeline.speech import LinearSpeechEncoder, SpeechAE
    from pipeline.train import dit as train_dit
    from pipeline.vae import build_vae

    cfg = get_preset("tiny")
    _fake_latent_clips(tmp_path / "data", cfg)
    build_vae(cfg.vae).save_pretrained(tmp_path / "vae")
    out = tmp_path / "run"
    train_dit.main(["--data", str(tmp_path / "data"), "--out", str(out), "--steps", "2", "--batch-size", "2",
                    "--val-every", "1", "--save-every", "2", "--vae", str(tmp_path / "vae"),
                    "--speech-encoder", encoder, "--no-ans"])
    pipe = TalkingHeadPipeline.from_pretrained(out / "pipeline")
    assert isinstance(pipe.speech_ae, LinearSpeechEncoder if encoder == "linear" else SpeechAE)
    assert pipe.config.sampling.motion_guidance is False
    rng = np.random.default_rng(0)
    video = pipe(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8), 0.1 * rng.standard_normal(24000),
                 num_inference_steps=1, cfg_mode="joint", progress=False)
    assert video.frames.shape == (38, 128, 128, 3)


@pytest.mark.slow
def test_dit_finetune_starts_from_the_given_dit_and_speech_ae_and_trains_both(tmp_path):
    """`--speech-encoder finetune --init-dit`: both models start from the given folders, both move;
    `--heldout` logs a loss on clips it does not train on; `--mouth-weight` reads the clips' mouth boxes."""
    from pipeline.config import get_preset
    from pipeline.dit import build_dit
    from pipeline.pipeline import TalkingHeadPipeline
    from pipeline.speech import build_speech_ae
    from pipeline.train import dit as train_dit
    from pipeline.vae import build_vae

    cfg = get_preset("tiny")
    _fake_latent_clips(tmp_path / "data", cfg)
    build_vae(cfg.vae).save_pretrained(tmp_path / "vae")
    torch.manual_seed(1)
    init_dit, init_ae = build_dit(cfg.dit), build_speech_ae(cfg.speech)
    init_dit.save_pretrained(tmp_path / "dit0"), init_ae.save_pretrained(tmp_path / "ae0")
    out = tmp_path / "run"
    train_dit.main(["--data", str(tmp_path / "data"), "--out", str(out), "--steps", "3", "--batch-size", "2",
                    "--val-every", "3", "--save-every", "3", "--lr", "1e-3", "--warmup", "1", "--vae", str(tmp_path / "vae"),
                    "--speech-ae", str(tmp_path / "ae0"), "--init-dit", str(tmp_path / "dit0"),
                    "--speech-encoder", "finetune", "--export-weights", "raw", "--heldout", str(tmp_path / "data"),
                    "--mouth-weight", "4"])
    pipe = TalkingHeadPipeline.from_pretrained(out / "pipeline")
    import csv

    rows = list(csv.DictReader((out / "log.csv").open()))
    assert float(rows[-1]["heldout_loss"]) > 0  # the held-out clips were scored at the validation step

    def dist(a, b):
        return sum((p - q).abs().sum().item() for p, q in zip(a.parameters(), b.parameters()))

    fresh = build_dit(cfg.dit)
    assert 0 < dist(pipe.dit, init_dit) < 0.1 * dist(fresh, init_dit)  # moved a little from the init
    enc_moved = sum((p - q).abs().sum().item() for (n, p), (_, q) in
                    zip(pipe.speech_ae.named_parameters(), init_ae.named_parameters()) if n.startswith("enc"))
    assert enc_moved > 0  # the encoder was trained with the DiT


def test_speech_dit_encodes_a_prefix_and_matches_the_whole_clip_codes():
    """SpeechDiT encodes only the frames it needs (the encoder is causal): same output as whole-clip codes."""
    from pipeline.config import get_preset
    from pipeline.dit import build_dit
    from pipeline.speech import build_speech_ae
    from pipeline.train.dit import SpeechDiT

    cfg = get_preset("tiny")
    torch.manual_seed(0)
    dit, enc = build_dit(cfg.dit).eval(), build_speech_ae(cfg.speech).eval()
    f, k = cfg.sampling.clip_latent_frames, 12
    windows = torch.randn(2, 1 + 8 * (k - 1), cfg.speech.window_dim)
    starts = torch.tensor([1, 4])
    x = torch.randn(2, cfg.dit.in_channels, 1 + f, 4, 4)
    t = torch.rand(2, 1 + f)
    with torch.no_grad():
        codes = enc.encode(windows)  # the whole clips
        idx = starts[:, None] + torch.arange(f)
        want = dit(x, t, codes[torch.arange(2)[:, None], idx])
        got = SpeechDiT(dit, enc)(x, t, (windows, starts))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _fake_video_clips(root, n=3, frames=41, size=32, seed=0):
    """Clip folders with what the VAE trainer reads: frames.npz and gt.npz (mouth box, openness)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"clip_{i:05d}"
        d.mkdir(parents=True)
        np.savez(d / "frames.npz", frames=rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8))
        box = np.tile(np.array([8, 16, 24, 24], np.int32), (frames, 1))
        np.savez(d / "gt.npz", openness=rng.random(frames).astype(np.float32), mouth_box=box)


@pytest.mark.parametrize("trainer", [pytest.param("vae", marks=pytest.mark.slow), "speech_ae",
                                     pytest.param("dit", marks=pytest.mark.slow), "refiner"])
def test_each_trainer_runs_with_its_own_defaults(tmp_path, trainer):
    """Only --data, --out and --steps given: every trainer runs, checkpoints and exports its model."""
    import importlib

    from pipeline.config import get_preset

    data = tmp_path / "data"
    if trainer in ("vae", "refiner"):
        _fake_video_clips(data)
    elif trainer == "speech_ae":
        _fake_clips(data, frames=41)
    else:
        _fake_latent_clips(data, get_preset("tiny"))
    out = tmp_path / "run"
    torch.set_num_threads(1)
    importlib.import_module(f"pipeline.train.{trainer}").main(["--data", str(data), "--out", str(out), "--steps", "3"])
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
    assert len((out / "log.csv").read_text().splitlines()) == 1 + 3
    assert (out / {"vae": "vae", "speech_ae": "speech_ae", "dit": "dit", "refiner": "refiner"}[trainer] / "config.json").exists()


def test_vae_trainer_mixes_images_and_video_and_resumes_with_its_ema(tmp_path):
    """After the image phase a step also trains on video windows (the mouth probe sees latent frames);
    a resumed run continues from the checkpoint's step, EMA included, and logs held-out PSNRs."""
    import csv

    from pipeline.train import vae as train_vae

    _fake_video_clips(tmp_path / "data")
    _fake_video_clips(tmp_path / "heldout", n=1, seed=1)
    out = tmp_path / "run"
    args = ["--data", str(tmp_path / "data"), "--out", str(out), "--heldout", str(tmp_path / "heldout"),
            "--image-steps", "1", "--image-batch", "2", "--batch-size", "1", "--frames", "9", "--ema", "0.99",
            "--val-every", "1", "--save-every", "2", "--probe-weight", "10"]
    torch.set_num_threads(1)
    train_vae.main(args + ["--steps", "2"])
    ema_before = load_file(str(out / "checkpoint" / "ema.safetensors"))
    train_vae.main(args + ["--steps", "3"])
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["probe"] == "0.0" and float(rows[1]["probe"]) > 0  # images only, then video windows too
    assert all(float(r["val_psnr_image"]) > 0 and float(r["val_mouth_psnr"]) > 0 for r in rows)
    ema_after = load_file(str(out / "checkpoint" / "ema.safetensors"))
    assert any(not torch.equal(ema_before[k], ema_after[k]) for k in ema_before)  # the EMA resumed and moved
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["extra"]["vae_config"]["latent_channels"] == 128


def test_vae_trainer_widens_a_saved_decoder_and_trains_only_it(tmp_path):
    """`--widen-from` + `--freeze-encoder` (+ the mouth-motion term): the run starts from the saved VAE's
    function with a decoder of twice the width, and its encoder (the DiT's latents) never changes."""
    from pipeline.config import TINY_VAE, VAEConfig
    from pipeline.train import vae as train_vae
    from pipeline.train.common import load_vae
    from pipeline.vae import build_vae

    torch.manual_seed(0)
    build_vae(VAEConfig(kwargs=dict(TINY_VAE))).save_pretrained(tmp_path / "small")
    _fake_video_clips(tmp_path / "data")
    wide = dict(TINY_VAE, decoder_block_out_channels=[32, 64, 128, 128])
    torch.set_num_threads(1)
    train_vae.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "2",
                    "--vae-kwargs", json.dumps(wide), "--widen-from", str(tmp_path / "small"), "--freeze-encoder",
                    "--image-steps", "0", "--frames", "9", "--batch-size", "1", "--image-batch", "2",
                    "--motion-weight", "1", "--probe-weight", "0"])
    trained, small = load_vae(tmp_path / "run" / "checkpoint"), load_vae(tmp_path / "small")
    assert trained.config.decoder_block_out_channels == [32, 64, 128, 128]
    for k, v in small.encoder.state_dict().items():
        assert torch.equal(trained.encoder.state_dict()[k], v), k
    exported = load_vae(tmp_path / "run" / "vae")  # the DiT's latent statistics are kept with the encoder
    assert torch.equal(exported.latents_mean, small.latents_mean) and torch.equal(exported.latents_std, small.latents_std)
    assert any(not torch.equal(p, q) for p, q in zip(trained.decoder.conv_out.parameters(),
                                                      small.decoder.conv_out.parameters()) if p.shape == q.shape)


def test_mouth_mask_marks_the_latent_cells_under_the_mouth_box_in_the_causal_layout():
    """Latent frame 0 is frame 0 alone, latent k the 8 frames after; a cell is marked when any of its
    frames' boxes overlaps it (128-pixel frames, 4x4 latents: 32-pixel cells)."""
    from pipeline.train.dit import mouth_mask

    boxes = np.tile(np.array([40, 70, 60, 80], np.int32), (17, 1))  # columns 1, row 2
    boxes[12] = [70, 100, 100, 110]  # one frame of latent 2 (frames 9..16) moves to columns 2-3, row 3
    m = mouth_mask(boxes, (128, 3, 4, 4), 128)
    want = torch.zeros(3, 4, 4, dtype=torch.bool)
    want[:, 2, 1] = True
    want[2, 3, 2:4] = True
    assert torch.equal(m, want)


def test_mouth_weighted_loss_is_the_plain_loss_at_weight_one_and_weights_the_mouth_cells():
    from pipeline.train.dit import ans_loss

    torch.manual_seed(0)
    z, ref = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 1, 4, 4)
    t, noise = torch.rand(2, 4), torch.randn(2, 4, 4, 4, 4)
    model = lambda x, t, codes, drop_audio=None, drop_ref=None: 0.5 * x  # noqa: E731
    off = torch.zeros(2, dtype=torch.bool)
    plain = ans_loss(model, z, ref, None, t, noise, off, off)
    ones = ans_loss(model, z, ref, None, t, noise, off, off, torch.ones(2, 1, 3, 4, 4))
    torch.testing.assert_close(ones, plain)
    w = torch.ones(2, 1, 3, 4, 4)
    w[:, :, :, 2, 1] = 8.0
    from pipeline.scheduler import add_noise, velocity_target

    x0 = torch.cat([ref, z], 2)
    err = (0.5 * add_noise(x0, noise, t) - velocity_target(x0, noise))[:, :, 1:] ** 2
    mouth, rest = err[:, :, :, 2, 1].mean(), (err.sum() - err[:, :, :, 2, 1].sum()) / (err.numel() - err[:, :, :, 2, 1].numel())
    n_mouth = 2 * 3  # cells (batch x frames)
    want = (8 * mouth * n_mouth + rest * (2 * 3 * 15)) / (8 * n_mouth + 2 * 3 * 15)
    torch.testing.assert_close(ans_loss(model, z, ref, None, t, noise, off, off, w), want)


def test_grow_depth_computes_the_same_velocity_and_its_new_blocks_learn():
    """The deepened DiT equals the trained one on the same input (old blocks kept in order, new ones the
    identity), and a loss step reaches every new block's output projections."""
    from pipeline.dit import A2VDiT
    from pipeline.train.dit import grow_depth
    from .conftest import randomize

    dit = randomize(A2VDiT(in_channels=4, hidden_size=16, depth=3, num_heads=2, audio_dim=6, rope_axes=(2, 2, 4)), seed=1)
    deeper = grow_depth(dit, 5)
    assert deeper.config.depth == 5
    torch.manual_seed(0)
    x, t, audio = torch.randn(2, 4, 4, 4, 4), torch.rand(2, 4), torch.randn(2, 3, 2, 6)
    drop = torch.tensor([False, True])
    with torch.no_grad():
        torch.testing.assert_close(deeper(x, t, audio, drop_audio=drop), dit(x, t, audio, drop_audio=drop))
    deeper(x, t, audio).square().mean().backward()
    new = [1, 3]  # 3 old blocks at 0, 2, 4
    assert all(deeper.blocks[j].mlp[2].weight.grad.abs().sum() > 0 for j in new)
    assert all(deeper.blocks[j].attn.out.weight.grad.abs().sum() > 0 for j in new)
    with pytest.raises(ValueError, match="smaller"):
        grow_depth(dit, 2)
