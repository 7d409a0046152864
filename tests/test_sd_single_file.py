"""The original single-file Stable Diffusion checkpoint: Lightning envelope read safely, converted
once, loaded offline with no Hub access; bad files are one sentence in well under a second.

The normal suite uses a tiny SD pipeline written in the original CompVis key layout
(``ldm_layout``); ``test_full_size_original_checkpoint_trains_and_generates_offline`` (marked
``slow``) does the same with a full-size SD v1 of random weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ldm_layout import pipeline_to_ldm, save_lightning_checkpoint

import hw2cli.pretrained.sd as sd
from hw2cli.errors import UsageError

RES = 32


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny SD pipeline (diffusers folder) and the same weights as a Lightning ``.ckpt``."""
    from diffusers import StableDiffusionPipeline
    from test_personalize import tiny_pipeline_folder

    root = tmp_path_factory.mktemp("single")
    folder = tiny_pipeline_folder(root)
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    state = pipeline_to_ldm(pipe)
    save_lightning_checkpoint(state, root / "tiny-sd.ckpt")
    counts = {p: sum(k.startswith(p) for k in state) for p in sd.V1_PREFIXES}
    return {"folder": folder, "ckpt": root / "tiny-sd.ckpt", "pipe": pipe, "state": state, "counts": counts}


@pytest.fixture
def tiny_config(tiny_ckpt, monkeypatch):
    """The shipped configs describe the full-size SD v1; the tiny checkpoint takes its own."""
    monkeypatch.setattr(sd, "sd_config_dir", lambda cache: tiny_ckpt["folder"])
    monkeypatch.setattr(sd, "V1_PREFIXES", tiny_ckpt["counts"])


@pytest.fixture
def no_network(monkeypatch):
    """Every outgoing connection fails and is recorded."""
    attempts: list[object] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_the_lightning_envelope_is_read_with_weights_only_and_no_lightning(tiny_ckpt):
    state = sd.read_checkpoint_state(tiny_ckpt["ckpt"])
    assert state.keys() == tiny_ckpt["state"].keys()
    assert all(torch.equal(state[k], v) for k, v in tiny_ckpt["state"].items())
    assert not any(name.startswith("pytorch_lightning") for name in sys.modules)
    # PyTorch alone refuses the file: the stand-in class is what makes weights_only work
    with pytest.raises(Exception, match="ModelCheckpoint"):
        torch.load(tiny_ckpt["ckpt"], weights_only=True)


def test_a_crafted_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "callbacks": Payload()}, tmp_path / "x.ckpt")
    with pytest.raises(UsageError, match=r"holds Python objects \(posix.system\).*refused") as info:
        sd.read_checkpoint_state(tmp_path / "x.ckpt")
    assert not marker.exists() and "weights_only" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "has 0 bytes"),
        (b"name,label\n" * 100, "neither a PyTorch checkpoint nor a safetensors file"),
        ("truncate", "truncated or corrupt"),
        ("sd2", "Stable Diffusion 2.x checkpoint"),
        ("other", "is not a Stable Diffusion v1 checkpoint: it has no model.diffusion_model.*"),
        ("half", "incomplete Stable Diffusion v1 checkpoint"),
    ],
)
def test_bad_files_are_one_sentence_in_well_under_a_second(tiny_ckpt, tmp_path, content, message):
    path = tmp_path / "bad.ckpt"
    if content == "truncate":
        data = tiny_ckpt["ckpt"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "sd2":
        torch.save({"state_dict": {"cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2),
                                   "model.diffusion_model.x": torch.zeros(1)}}, path)  # fmt: skip
    elif content == "other":
        torch.save({"conv1.weight": torch.zeros(6, 3, 5, 5)}, path)
    elif content == "half":
        keys = sorted(tiny_ckpt["state"])[::2]
        torch.save({"state_dict": {k: tiny_ckpt["state"][k] for k in keys}}, path)
    else:
        path.write_bytes(content)
    start = time.perf_counter()
    with pytest.raises(UsageError, match=message) as info:
        sd.cached_single_file(path, tmp_path / "cache")
    assert time.perf_counter() - start < 1.0
    assert str(path) in str(info.value)
    assert not (tmp_path / "cache").exists()  # nothing converted


def test_the_pipeline_call_passes_nothing_that_reaches_the_hub():
    args = sd.pipeline_arguments(torch.float32)
    assert args["safety_checker"] is None and args["requires_safety_checker"] is False
    assert "load_safety_checker" not in args  # diffusers 0.42 tests it with `is not None` and downloads


def test_the_original_layout_loads_offline_equal_to_the_source_and_converts_once(
    tiny_ckpt, tiny_config, tmp_path, no_network
):
    notes: list[str] = []
    cache = tmp_path / "cache"
    pipe = sd.load_pipeline(tiny_ckpt["ckpt"], device=torch.device("cpu"), cache=cache, note=notes.append)
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(tiny_ckpt["pipe"], name).state_dict(), getattr(pipe, name).state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[k], got[k]) for k in want), name
    assert pipe.safety_checker is None
    converted = list((cache / "sd_single_file").glob("tiny-sd-*.safetensors"))
    assert len(converted) == 1 and len(notes) == 1 and "converting tiny-sd.ckpt" in notes[0]
    again = sd.load_pipeline(tiny_ckpt["ckpt"], device=torch.device("cpu"), cache=cache, note=notes.append)
    assert len(notes) == 1  # the second load used the cached safetensors file
    assert torch.equal(again.unet.conv_in.weight, pipe.unet.conv_in.weight)
    direct = sd.load_pipeline(converted[0], device=torch.device("cpu"), cache=tmp_path / "c2", note=notes.append)
    assert torch.equal(direct.vae.decoder.conv_out.weight, pipe.vae.decoder.conv_out.weight)
    assert no_network == []


def test_personalize_runs_on_the_original_checkpoint_through_the_cli(
    run_cli, tiny_ckpt, tiny_config, tmp_path, no_network, monkeypatch
):
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "cache"))
    refs = tmp_path / "refs"
    refs.mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (40, 40), (200, 100 + 50 * i, 0)).save(refs / f"{i}.png")
    r = run_cli("--device", "cpu", "personalize", "train", "--model", tiny_ckpt["ckpt"], "--concept",
                f"<new1>={refs}:dog", "--steps", "1", "--resolution", RES, "--out", tmp_path / "run")  # fmt: skip
    assert r.code == 0, r.err
    assert "converting tiny-sd.ckpt to safetensors once" in r.err
    r = run_cli("--device", "cpu", "personalize", "generate", "--prompt", "A <new1> on a hill.", tmp_path / "gen",
                "--model", tiny_ckpt["ckpt"], "--embeds", tmp_path / "run", "--steps", "1", "--resolution", RES,
                "-n", "2")  # fmt: skip
    assert r.code == 0, r.err
    assert "converting" not in r.err  # converted once, by the training run
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == [
        "A_new1_on_a_hill_0.png", "A_new1_on_a_hill_1.png", "A_new1_on_a_hill_sheet.png"
    ]  # fmt: skip
    assert no_network == []


# --------------------------------------------------------------------------- the full-size check (slow)

FULL = """
import json, resource, sys, time, torch
sys.path.insert(0, sys.argv[2])
from ldm_layout import pipeline_to_ldm, save_lightning_checkpoint
from types import SimpleNamespace
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel
from hw2cli.pretrained.sd import shipped_config_dir

c = shipped_config_dir()
with torch.device("meta"):
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(c / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(c / "vae"))
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(c / "text_encoder"))
gen = torch.Generator().manual_seed(0)
for module in (unet, vae, text):
    module.to_empty(device="cpu")
    for p in module.state_dict().values():
        if p.is_floating_point():
            p.normal_(0.0, 0.02, generator=gen)
state = pipeline_to_ldm(SimpleNamespace(unet=unet, vae=vae, text_encoder=text))
counts = {p: sum(k.startswith(p) for k in state) for p in ("model.diffusion_model.", "first_stage_model.",
          "cond_stage_model.transformer.text_model.")}
params = sum(v.numel() for k, v in state.items() if k.startswith("model.diffusion_model."))
save_lightning_checkpoint(state, sys.argv[1])
print(json.dumps({"keys": len(state), "counts": counts, "unet_params": params}))
"""


LOAD = """
import sys, torch
from pathlib import Path
from hw2cli.pretrained.sd import load_pipeline
pipe = load_pipeline(sys.argv[1], device=torch.device("cpu"), cache=Path(sys.argv[2]), note=print)
print("unet parameters", sum(p.numel() for p in pipe.unet.parameters()))
"""
BASELINE = """
import sys
from diffusers import StableDiffusionPipeline
try:
    StableDiffusionPipeline.from_single_file(sys.argv[1], local_files_only=True, safety_checker=None)
except Exception as exc:
    print("diffusers alone:", type(exc).__name__, str(exc)[:200])
"""


def _measured(cmd, env):
    """Run ``cmd`` under GNU time: (process, wall seconds, peak resident GiB of that process)."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], env=env, capture_output=True, text=True,
                          timeout=3600)  # fmt: skip
    wall, kib = proc.stderr.strip().splitlines()[-1].split()
    return proc, float(wall), int(kib) / 2**20


@pytest.mark.slow
def test_full_size_original_checkpoint_trains_and_generates_offline(tmp_path):
    """Builds a 4.3 GB SD v1 checkpoint in the CompVis layout (random weights), loads it twice and
    runs ``hw2 personalize train`` and ``generate`` on it with the network off; prints the numbers
    recorded in benchmarks/RESULTS.md. Run: ``pytest -m slow tests/test_sd_single_file.py -s``."""
    ckpt = tmp_path / "sd-v1-4.ckpt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW2_")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HW2_WEIGHTS_DIR": str(tmp_path / "cache"),
            "HW2_DEVICE": "cpu", "OMP_NUM_THREADS": str(os.cpu_count() or 1)}  # fmt: skip
    made = subprocess.run([sys.executable, "-c", FULL, str(ckpt), str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=3600)  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    facts = json.loads(made.stdout.strip().splitlines()[-1])
    assert facts["counts"] == {"model.diffusion_model.": 686, "first_stage_model.": 248,
                               "cond_stage_model.transformer.text_model.": 197}  # fmt: skip
    assert facts["keys"] == 686 + 248 + 197 + 12 + 2  # + position_ids, schedule buffers, EMA counters
    assert round(facts["unet_params"] / 1e6, 1) == 859.5
    baseline, t_base, m_base = _measured([sys.executable, "-c", BASELINE, str(ckpt)], env)
    first, t_first, m_first = _measured([sys.executable, "-c", LOAD, str(ckpt), str(tmp_path / "cache")], env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "converting sd-v1-4.ckpt to safetensors once" in first.stdout
    assert "unet parameters 859520964" in first.stdout
    second, t_second, m_second = _measured([sys.executable, "-c", LOAD, str(ckpt), str(tmp_path / "cache")], env)
    assert second.returncode == 0 and "converting" not in second.stdout, second.stderr[-3000:]
    refs = tmp_path / "refs"
    refs.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64), (180, 120, 40)).save(refs / "a.png")
    hw2 = [sys.executable, "-m", "hw2cli"]
    train, t_train, m_train = _measured([*hw2, "personalize", "train", "--model", str(ckpt), "--concept",
                                         f"<new1>={refs}:dog", "--steps", "1", "--resolution", "64", "--out",
                                         str(tmp_path / "run")], env)  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    gen, t_gen, m_gen = _measured([*hw2, "personalize", "generate", "--prompt", "A <new1> on a hill.",
                                   str(tmp_path / "gen"), "--model", str(ckpt), "--embeds", str(tmp_path / "run"),
                                   "--steps", "1", "--resolution", "64", "-n", "1"], env)  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert len(list((tmp_path / "gen").glob("*.png"))) == 1
    print(json.dumps({
        "ckpt_gib": round(ckpt.stat().st_size / 2**30, 2),
        "diffusers_alone": [baseline.stdout.strip()[:160], round(t_base, 1), round(m_base, 2)],
        "first_load": [round(t_first, 1), round(m_first, 2)], "second_load": [round(t_second, 1), round(m_second, 2)],
        "train_1_step": [round(t_train, 1), round(m_train, 2)], "generate_1_step": [round(t_gen, 1), round(m_gen, 2)],
    }))  # fmt: skip
