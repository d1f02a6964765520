"""What can be checked of the Hugging Face Space without a GPU or a network."""
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import publish, serving

ROOT = Path(__file__).resolve().parents[1]


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with the Space's YAML front matter"
    return yaml.safe_load(match.group(1))


def test_front_matter_pins_the_tested_python_and_the_required_gradio():
    meta = front_matter()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", (ROOT / "requirements.txt").read_text(), re.M))
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert str(meta["sdk_version"]) == pins["gradio"]
    assert str(meta["python_version"]) == f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.mark.parametrize("capability, native", [((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_only_where_it_is_native(capability, native):
    """A T4 (7.5) reports bf16 as supported but only emulates it: it must get fp16."""
    assert serving.native_bf16(capability) is native


def test_timesteps_and_euler_state_stay_float32_in_a_half_precision_pipeline(portrait, speech_wav):
    from pipeline.pipeline import TalkingHeadPipeline
    from tests.conftest import small_config

    seen = []
    pipe = TalkingHeadPipeline.from_config(small_config()).to(dtype=torch.bfloat16)
    pipe.dit.register_forward_pre_hook(lambda m, args: seen.append((args[0].dtype, args[1].dtype)))
    frames = pipe(portrait, speech_wav[:16000], num_inference_steps=2, cfg_mode="joint", progress=False).frames
    assert seen and all(z == torch.bfloat16 and t == torch.float32 for z, t in seen), seen
    assert frames.shape[0] == 25


def test_prepared_space_has_what_it_needs_and_lfs_rules(tmp_path):
    out = publish.prepare(tmp_path / "space")
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"app.py", "requirements.txt", "packages.txt", "README.md", ".gitattributes"} <= names
    assert any(n.startswith("assets/model/") and n.endswith(".safetensors") for n in names)
    assert not any(n.startswith(("tests/", ".ci/", "assets/training/")) for n in names)  # no resume-only weights
    rules = (out / ".gitattributes").read_text().splitlines()
    patterns = [r.split()[0] for r in rules if "filter=lfs" in r]
    for name in names:  # every weight and every file of 10 MB or more goes through LFS
        size = (out / name).stat().st_size
        if name.endswith(".safetensors") or size >= publish.LFS_MIN_BYTES:
            assert any(Path(name).match(p) or name == p for p in patterns), name
