"""The frame refiner after the VAE decoder: identity until trained, per frame (so streaming stays exact),
saved and loaded with the pipeline, and trainable to beat the decoder alone on unseen clips."""
import numpy as np
import pytest
import torch

from pipeline import vae as vae_lib
from pipeline.config import VAEConfig
from pipeline.refiner import FrameRefiner

from .conftest import SMALL_VAE
from .conftest import trained_looking as _trained_looking


def test_untrained_refiner_is_the_identity_and_rejects_frames_it_cannot_patch():
    x = torch.rand(3, 3, 32, 48) * 2 - 1
    assert torch.equal(FrameRefiner()(x), x)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        FrameRefiner()(torch.zeros(1, 3, 30, 32))


def test_refine_video_refines_each_frame_on_its_own():
    r = _trained_looking(FrameRefiner(hidden_channels=8, num_layers=2))
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        out = r.refine_video(video, frames_per_batch=3)
        assert not torch.allclose(out, video)
        assert torch.allclose(out[1, :, 3], r(video[1, :, 3][None])[0], atol=1e-6)


def _stream(decoder, z):
    """Three clips' latents pushed in turn -> the streamed video and the last push's frames."""
    parts = [decoder.push(z[:, :, :5]), decoder.push(z[:, :, 5:9]), decoder.push(z[:, :, 9:], final=True)]
    return torch.cat([p for p in parts if p is not None], dim=2), parts[-1]


def test_streamed_decode_with_a_refiner_is_the_streamed_decode_refined_frame_by_frame():
    """The refiner works per frame, so it adds no seam of its own: clip-by-clip decoding with it equals
    the same clip-by-clip decoding without it, refined; and the one-shot decode refined, where the
    decoder's own streaming does (the last push, decoded with full left context)."""
    torch.manual_seed(0)
    vae = vae_lib.build_vae(VAEConfig(kwargs=dict(SMALL_VAE))).eval()
    r = _trained_looking(FrameRefiner(hidden_channels=8, num_layers=2))
    z = torch.randn(1, 16, 13, 2, 2)
    full = vae_lib.decode(vae, z, refiner=r)
    assert not torch.allclose(full, vae_lib.decode(vae, z), atol=1e-3)
    streamed, last = _stream(vae_lib.StreamingDecoder(vae, context=13, refiner=r), z)
    plain, _ = _stream(vae_lib.StreamingDecoder(vae, context=13), z)
    with torch.no_grad():
        assert torch.allclose(streamed, r.refine_video(plain), atol=1e-5)
    assert torch.allclose(last, full[:, :, -last.shape[2]:], atol=1e-5)


def test_pipeline_saves_loads_and_uses_its_refiner(small_pipe, portrait, speech_wav, tmp_path):
    from pipeline.pipeline import TalkingHeadPipeline

    kw = dict(cfg_mode="joint", num_inference_steps=2, progress=False)
    plain = small_pipe(portrait, speech_wav[:16000], **kw).frames
    small_pipe.refiner = _trained_looking(FrameRefiner(hidden_channels=8, num_layers=2))
    try:
        refined = small_pipe(portrait, speech_wav[:16000], **kw).frames
        small_pipe.save_pretrained(tmp_path / "model")
    finally:
        small_pipe.refiner = None
    assert refined.shape == plain.shape and not np.array_equal(refined, plain)
    loaded = TalkingHeadPipeline.from_pretrained(tmp_path / "model")
    assert loaded.refiner is not None
    assert np.array_equal(loaded(portrait, speech_wav[:16000], **kw).frames, refined)
    assert TalkingHeadPipeline.from_pretrained(tmp_path / "model").refiner.config.num_layers == 2


@pytest.mark.slow
def test_refiner_trainer_beats_the_decoder_alone_on_unseen_clips(tmp_path):
    """Synthetic faces through a small untrained VAE (its decode far from the truth): 150 steps of the
    trainer lift held-out PSNR above the decoder's own, in the whole frame and in the eyes box, and it
    exports the refiner."""
    import csv

    from pipeline.data import synthetic
    from pipeline.train import refiner as trainer

    synthetic.main(["--out", str(tmp_path / "train"), "--clips", "4", "--seconds", "1", "--seed", "1", "--size", "64"])
    synthetic.main(["--out", str(tmp_path / "val"), "--clips", "2", "--seconds", "1", "--seed", "2", "--size", "64"])
    torch.manual_seed(0)
    vae_lib.build_vae(VAEConfig(kwargs=dict(SMALL_VAE))).save_pretrained(tmp_path / "vae")
    torch.set_num_threads(1)
    trainer.main(["--data", str(tmp_path / "train"), "--out", str(tmp_path / "run"), "--vae", str(tmp_path / "vae"),
                  "--heldout", str(tmp_path / "val"), "--steps", "150", "--val-every", "150", "--crop", "32",
                  "--hidden-channels", "32", "--num-layers", "2"])
    row = [r for r in csv.DictReader((tmp_path / "run" / "log.csv").open()) if r["val_psnr"]][-1]
    assert float(row["val_psnr"]) > float(row["val_psnr_decoder"]) + 0.5, row
    assert float(row["val_psnr_eyes"]) > float(row["val_psnr_eyes_decoder"]), row
    assert (tmp_path / "run" / "refiner" / "config.json").exists()


@pytest.mark.slow
def test_refiner_trainer_also_learns_from_a_pipelines_sdedit_decodes(small_pipe, tmp_path):
    """--generated: every clip is decoded twice (its reconstruction and the DiT's SDEdit of it, which
    differ, same frames as the truth), and the trainer runs on both."""
    from pipeline.data import synthetic
    from pipeline.train import refiner as trainer

    synthetic.main(["--out", str(tmp_path / "train"), "--clips", "2", "--seconds", "1", "--seed", "1", "--size", "64"])
    small_pipe.save_pretrained(tmp_path / "pipe")
    clips = trainer.decoded_clips(small_pipe.vae, tmp_path / "train", 2)
    generated = trainer.sdedit_clips(small_pipe, clips, copies=2)
    assert len(generated) == 2 * len(clips)
    for i, g in enumerate(generated):
        c = clips[i // 2]
        assert g["decode"].shape == c["decode"].shape == c["truth"].shape
        assert not np.array_equal(g["decode"], c["decode"]) and g["truth"] is c["truth"]
        assert g["mouth_error"].shape == (len(c["truth"]),) and (g["mouth_error"] >= 0).all()
    assert not np.array_equal(generated[0]["decode"], generated[1]["decode"])  # own t0 and noise per copy
    with pytest.raises(SystemExit):
        trainer.main(["--data", str(tmp_path / "train"), "--out", str(tmp_path / "bad"), "--generated",
                      str(tmp_path / "pipe"), "--vae", str(tmp_path / "pipe" / "vae")])
    with pytest.raises(SystemExit):  # the copies are of --generated's decodes
        trainer.main(["--data", str(tmp_path / "train"), "--out", str(tmp_path / "bad"), "--sdedit-copies", "2"])
    trainer.main(["--data", str(tmp_path / "train"), "--out", str(tmp_path / "run"), "--generated",
                  str(tmp_path / "pipe"), "--steps", "3", "--crop", "32", "--sdedit-copies", "2",
                  "--mouth-error-frames"])
    assert (tmp_path / "run" / "refiner" / "config.json").exists()


def test_vae_only_figures_go_through_the_refiner_as_generation_does():
    """`eval.synthetic --vae-only` decodes as the pipeline does: an identity refiner changes no figure,
    one that alters the frames changes them."""
    from pipeline.eval.synthetic import vae_fidelity

    torch.manual_seed(0)
    vae = vae_lib.build_vae(VAEConfig(kwargs=dict(SMALL_VAE))).eval()
    frames = np.random.default_rng(0).integers(0, 255, (18, 32, 32, 3), dtype=np.uint8)

    class Clip:
        gt = {"eyes_box": np.tile([4, 4, 28, 12], (18, 1)), "mouth_box": np.tile([8, 20, 24, 28], (18, 1))}

    Clip.frames = frames
    plain = vae_fidelity(vae, Clip)
    assert vae_fidelity(vae, Clip, refiner=FrameRefiner().eval()) == plain
    changed = vae_fidelity(vae, Clip, refiner=_trained_looking(FrameRefiner(hidden_channels=8, num_layers=2)))
    assert all(changed[k] != plain[k] for k in plain)


def test_crops_sit_on_the_eyes_for_reconstructions_and_on_the_mouth_for_generated_decodes():
    from pipeline.train.refiner import crop_batch

    n = 64
    truth = np.zeros((3, 128, 128, 3), np.uint8)
    eyes, mouth = np.tile([20, 16, 60, 28], (3, 1)), np.tile([70, 96, 110, 112], (3, 1))  # far apart
    clip = {"decode": truth, "truth": truth, "eyes_box": eyes, "mouth_box": mouth}
    truth_mark = truth.copy()
    truth_mark[:, 96:112, 70:110] = 255  # the mouth box, marked in the truth

    def share_on_mouth(c):
        _, tru = crop_batch([c | {"truth": truth_mark}], 400, 32, 4, np.random.default_rng(0))
        return float((tru.amax(dim=(1, 2, 3)) > 0).float().mean())

    recon, generated = share_on_mouth(clip), share_on_mouth(clip | {"generated": True})
    assert 0.15 < recon < 0.45 and generated > 0.7, (recon, generated)
    dec, tru = crop_batch([clip], n, 32, 4, np.random.default_rng(1))
    assert dec.shape == tru.shape == (n, 3, 32, 32)


def test_evaluation_refuses_a_refiner_folder_that_holds_none(tmp_path, capsys):
    from pipeline.eval.synthetic import parse_args

    with pytest.raises(SystemExit) as err:
        parse_args(["--refiner", str(tmp_path)])
    assert err.value.code == 2 and "no saved refiner" in capsys.readouterr().err
    assert parse_args(["--refiner", "none"]).refiner == "none"


def test_mouth_error_frames_single_out_the_frame_with_the_wrong_mouth():
    """Online hard-example mining: a generated decode whose mouth is wrong in one frame of eight has that
    frame drawn about half the time (half uniform, half by error), and the crops follow the weights."""
    from pipeline.train.refiner import box_errors, crop_batch, frame_weights

    truth = np.zeros((8, 64, 64, 3), np.uint8)
    decode = truth.copy()
    decode[5, 40:50, 20:44] = 200  # frame 5: a wrong mouth
    decode[2, 0:10, 0:10] = 200  # frame 2: wrong outside the mouth box, not counted
    mouth = np.tile([20, 40, 44, 52], (8, 1))
    err = box_errors(decode, truth, mouth)
    assert err.shape == (8,) and err[5] > 0 and np.count_nonzero(err) == 1
    w = frame_weights(err)
    assert np.isclose(w.sum(), 1) and np.isclose(w[5], 0.5 + 0.5 / 8) and np.isclose(w[0], 0.5 / 8)
    assert np.allclose(frame_weights(np.zeros(8)), 1 / 8)
    many = np.random.default_rng(0).random(201).astype(np.float32) * 3000  # a clip's float32 errors
    np.random.default_rng(0).choice(201, size=5, p=frame_weights(many))  # sums to 1 within numpy's tolerance
    assert box_errors(decode, truth, None) is None

    marked = decode.copy()
    marked[5] = 255  # the hard frame, marked in the decode
    clip = {"decode": marked, "truth": truth, "eyes_box": mouth, "mouth_box": mouth, "generated": True}
    def share_hard(c):
        dec, _ = crop_batch([c], 400, 32, 4, np.random.default_rng(0))
        return float((dec.amin(dim=(1, 2, 3)) > 0.99).float().mean())
    assert 0.45 < share_hard(clip | {"frame_weights": w}) < 0.7 and share_hard(clip) < 0.3


def test_examples_picture_row_shows_each_pipelines_reconstruction_and_generation(small_pipe):
    """One row: the input, then per pipeline its reference reconstruction (PSNR against the input) and a
    generated frame; a refiner that changes the frames changes the reconstruction's PSNR."""
    import copy

    from pipeline.eval.examples_picture import example_row

    refined = copy.copy(small_pipe)
    refined.refiner = _trained_looking(FrameRefiner(hidden_channels=8, num_layers=2))
    settings = dict(num_inference_steps=1, cfg_mode="joint")
    row, figures = example_row({"plain": small_pipe, "refined": refined}, 0, 5, settings)
    h, w = small_pipe.config.height, small_pipe.config.width
    assert row.shape == (14 + h, 5 * w, 3) and row.dtype == np.uint8
    assert set(figures) == {"plain", "refined"} and figures["plain"] != figures["refined"]
    assert all(0 < v < 60 for v in figures.values())
