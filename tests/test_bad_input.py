"""Bad input across every command, one row per case, through the real entry point.

Each row: the arguments (placeholders in braces are files made once for the module), the exit
code (2: the user asked for something invalid; 1: a valid request failed at run time), and words
the one-sentence error must contain — the bad value or the thing that is wrong. Every row also
checks that no traceback and no generic "unexpected" message reaches the user.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from hw2cli.data.synth import synthesize
from hw2cli.diffusion.wrappers import build_network
from hw2cli.io.checkpoints import DiffusionConfig, save_checkpoint

TINY = {"base_channels": 8, "head_dim": 8, "groups": 4, "channel_mult": [1, 2], "attention_levels": [1]}


class Payload:
    """A pickle that would create a marker file when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    paths: dict[str, Path] = {"root": root}
    torch.manual_seed(0)
    config = DiffusionConfig(model=dict(TINY))
    paths["ckpt"] = save_checkpoint(build_network(config), config, root / "ckpt")
    data = (root / "ckpt" / "model.safetensors").read_bytes()
    (root / "trunc.safetensors").write_bytes(data[: len(data) // 3])
    paths["trunc_st"] = root / "trunc.safetensors"
    paths["marker"] = root / "pwned"
    torch.save({"state_dict": Payload(paths["marker"])}, root / "evil.pt")
    paths["evil"] = root / "evil.pt"
    (root / "file.txt").write_text("not a folder")
    paths["file"] = root / "file.txt"
    (root / "sd.ckpt").write_bytes(b"PK\x03\x04" + b"a stand-in: every case below fails before the model loads" * 2)
    (root / "empty").mkdir()
    paths["empty"] = root / "empty"
    synthesize(root / "data", per_class=2, seed=5)
    paths["digits"] = root / "data" / "digits"
    noise = root / "noise"
    noise.mkdir()
    torch.save(torch.randn(1, 3, 32, 32), noise / "00.pt")
    paths["noise"] = noise
    nan_noise = root / "nan_noise"
    nan_noise.mkdir()
    torch.save(torch.full((1, 3, 32, 32), float("nan")), nan_noise / "00.pt")
    paths["nan_noise"] = nan_noise
    (root / "gt").mkdir()
    paths["gt"] = root / "gt"
    # generated P1 folders: one with a stray file, one with a badly named image
    stray = root / "gen_stray" / "mnistm"
    stray.mkdir(parents=True)
    (stray / "notes.txt").write_text("x")
    paths["gen_stray"] = root / "gen_stray"
    badname = root / "gen_badname"
    for ds in ("mnistm", "svhn"):
        (badname / ds).mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (28, 28)).save(badname / "mnistm" / "x_001.png")
    paths["gen_badname"] = badname
    # run folders holding a crafted resume state
    evil = root / "run_evil" / "state-0000001"  # a P1 state whose accelerate RNG file is crafted
    evil.mkdir(parents=True)
    torch.save({"step": 1, "payload": Payload(paths["marker"])}, evil / "random_states_0.pkl")
    (evil / "hw2_state.json").write_text(json.dumps({"step": 1, "processes": [{}]}))
    paths["run_evil"] = root / "run_evil"
    state = root / "p3_evil" / "state-0000001"  # an accelerate state folder with a crafted optimizer file
    state.mkdir(parents=True)
    torch.save({"state": Payload(paths["marker"])}, state / "optimizer.bin")
    (state / "hw2_state.json").write_text(json.dumps({"step": 1, "rng": []}))
    paths["p3_evil"] = root / "p3_evil"
    refs = root / "refs" / "0"
    refs.mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 100, 0)).save(refs / "a.png")
    paths["refs"] = root / "refs"
    # input.json variants
    good = {
        "0": {
            "src_image": "0",
            "token_name": "<new1>",
            "prompt": ["A <new1>."],
            "prompt_4_clip_eval": ["A dog."],
            "baseline": [[70, 30]],
        }
    }
    variants = {
        "json_good": good,
        "json_string_prompt": {"0": {"token_name": "<new1>", "prompt": "A <new1> on a hill."}},
        "json_escape_key": {"../../evil": {"token_name": "<new1>", "prompt": ["A <new1>."]}},
        "json_abs_key": {"/tmp/x": {"token_name": "<new1>", "prompt": ["A <new1>."]}},
        "json_bad_token": {"0": {"token_name": "<../x>", "prompt": ["A <new1>."]}},
        "json_no_token": {"0": {"prompt": ["A dog."]}},
        "json_lengths": {"0": {**good["0"], "baseline": [[70, 30], [1, 2]]}},
        "json_no_eval": {"0": {"token_name": "<new1>", "prompt": ["A <new1>."]}},
        "json_empty": {},
        "json_list": [1, 2],
        "json_nan_baseline": {"0": {**good["0"], "baseline": [["a", 30]]}},
        "json_empty_prompts": {"0": {"token_name": "<new1>", "prompt": []}},
    }
    for name, content in variants.items():
        paths[name] = root / f"{name}.json"
        paths[name].write_text(json.dumps(content))
    paths["json_invalid"] = root / "invalid.json"
    paths["json_invalid"].write_text("{ not json")
    paths["missing"] = root / "does-not-exist"
    return paths


S = ["ddpm", "sample", "--checkpoint", "{ckpt}", "--digit", "1"]
G = ["ddpm", "generate", "{root}/gen", "--checkpoint", "{ckpt}"]
T = ["ddpm", "train", "--data", "{digits}", "--out", "{root}/run"]
D = ["ddim", "sample", "{noise}", "{root}/ddim_out", "--checkpoint", "{ckpt}"]
PT = ["personalize", "train", "--model", "{root}/sd.ckpt", "--concept", "<new1>={refs}/0:dog"]
PG = ["personalize", "generate", "{json_good}", "{root}/p3", "--model", "{root}/sd.ckpt"]

ROWS = [
    # --- global options and the root
    (["--device", "tpu", "env"], 2, "'tpu'"),
    (["--dtype", "fp8", "env"], 2, "'fp8'"),
    (["--seed", "-1", "env"], 2, "-1"),
    (["--seed", "abc", "env"], 2, "'abc'"),
    (["--kernels", "cuda", "env"], 2, "'cuda'"),
    (["--config", "{missing}", "env"], 2, "no such file"),
    (["nosuchcommand"], 2, "nosuchcommand"),
    (["--nosuchoption"], 2, "--nosuchoption"),
    (["config", "nosuch"], 2, "nosuch"),
    (["plugins", "--bogus"], 2, "--bogus"),
    # --- data synth / mnistm / svhn / check
    (["data", "synth", "{root}/s", "--per-class", "0"], 2, "--per-class is 0"),
    (["data", "synth", "{root}/s", "--per-class", "-5"], 2, "--per-class is -5"),
    (["data", "synth", "{root}/s", "--per-class", "x"], 2, "'x'"),
    (["data", "synth", "{root}/s", "--seed", "-1"], 2, "--seed is -1"),
    (["data", "synth", "{root}/s", "--val-fraction", "1.5"], 2, "1.5"),
    (["data", "synth", "{root}/s", "--val-fraction", "nan"], 2, "nan"),
    (["data", "synth", "{root}/s", "--val-fraction", "-0.1"], 2, "-0.1"),
    (["data", "synth", "{root}/s", "--datasets", "cifar"], 2, "cifar"),
    (["data", "synth", "{file}"], 2, "is an existing file"),
    (["data", "mnistm", "{root}/m", "--digits", "nosuchsource"], 2, "nosuchsource"),
    (["data", "mnistm", "{root}/m", "--digits", "{empty}"], 2, "holds neither"),
    (["data", "mnistm", "{root}/m", "--backgrounds", "nosuchsource"], 2, "nosuchsource"),
    (["data", "mnistm", "{root}/m", "--backgrounds", "{empty}"], 2, "holds no images"),
    (["data", "mnistm", "{root}/m", "--per-digit", "0"], 2, "--per-digit is 0"),
    (["data", "mnistm", "{root}/m", "--seed", "-2"], 2, "--seed is -2"),
    (["data", "mnistm", "{root}/m", "--val-fraction", "inf"], 2, "--val-fraction is inf; expected a finite number"),
    (["data", "mnistm", "{root}/m", "--digit-split", "most"], 2, "'most'"),
    (["data", "mnistm", "{root}/m", "--crop-region", "left"], 2, "'left'"),
    (["data", "mnistm", "{file}"], 2, "is an existing file"),
    (["data", "svhn", "{root}/v", "--source", "cifar"], 2, "'cifar'"),
    (["data", "svhn", "{root}/v", "--per-class", "0"], 2, "--per-class is 0"),
    (["data", "svhn", "{root}/v", "--val-fraction", "2"], 2, "2"),
    (["data", "svhn", "{file}"], 2, "is an existing file"),
    (["data", "check", "{missing}"], 2, "does-not-exist"),
    (["data", "check", "{empty}"], 2, "empty"),
    # --- ddpm train
    ([*T, "--steps", "0"], 2, "--steps is 0"),
    ([*T, "--steps", "-3"], 2, "--steps is -3"),
    ([*T, "--batch", "0"], 2, "--batch is 0"),
    ([*T, "--lr", "nan"], 2, "--lr is nan; expected a finite number"),
    ([*T, "--lr", "0"], 2, "--lr is 0"),
    ([*T, "--lr", "-1"], 2, "--lr is -1"),
    ([*T, "--ema", "1.5"], 2, "--ema is 1.5"),
    ([*T, "--drop-prob", "1"], 2, "--drop-prob is 1"),
    ([*T, "--width", "0"], 2, "--width is 0"),
    ([*T, "--width", "12"], 2, "--width is 12"),
    ([*T, "--checkpoint-every", "0"], 2, "--checkpoint-every is 0"),
    ([*T, "--sample-every", "-1"], 2, "--sample-every is -1"),
    ([*T, "--seed", "-1"], 2, "--seed is -1"),
    ([*T, "--datasets", "cifar"], 2, "'cifar'"),
    ([*T, "--resume"], 2, "holds no saved training state"),
    (["ddpm", "train", "--data", "{digits}", "--out", "{file}/run"], 2, "is a file, not a folder"),
    (["ddpm", "train", "--data", "{missing}", "--out", "{root}/run2"], 2, "does-not-exist"),
    (["ddpm", "train", "--data", "{digits}", "--out", "{run_evil}", "--resume"], 2, "refused"),
    # --- ddpm sample
    (["ddpm", "sample", "--digit", "12"], 2, "--digit is 12"),
    (["ddpm", "sample", "--digit", "x"], 2, "--digit is 'x'"),
    (["ddpm", "sample", "--digit", "-1"], 2, "--digit is -1"),
    ([*S, "-n", "-1"], 2, "-n is -1"),
    ([*S, "-n", "0"], 2, "-n is 0"),
    ([*S, "--guidance", "nan"], 2, "nan"),
    ([*S, "--guidance", "inf"], 2, "inf"),
    ([*S, "--guidance", "-5"], 2, "--guidance is -5"),
    ([*S, "--sampler", "euler"], 2, "'euler'"),
    ([*S, "--steps", "0"], 2, "--steps is 0"),
    ([*S, "--steps", "-3"], 2, "--steps is -3"),
    ([*S, "--sampler", "ddim", "--steps", "5000"], 2, "--steps is 5000"),
    ([*S, "--dataset", "cifar"], 2, "'cifar'"),
    ([*S, "--seed", "-1"], 2, "--seed is -1"),
    ([*S, "--data-range", "0-1"], 2, "'0-1'"),
    ([*S, "--cond-layout", "rows"], 2, "'rows'"),
    ([*S, "--out", "{file}"], 2, "is an existing file"),
    (["ddpm", "sample", "--digit", "1", "--checkpoint", "{missing}"], 2, "does-not-exist"),
    (["ddpm", "sample", "--digit", "1", "--checkpoint", "{trunc_st}"], 2, "truncated or corrupt"),
    (["ddpm", "sample", "--digit", "1", "--checkpoint", "{empty}"], 2, "does not exist"),
    (["ddpm", "sample", "--digit", "1", "--checkpoint", "{evil}"], 2, "refused"),
    # --- ddpm generate / grid / trajectory / eval
    ([*G, "--per-digit", "0"], 2, "--per-digit is 0"),
    ([*G, "--per-digit", "1000"], 2, "--per-digit is 1000"),
    ([*G, "--batch", "0"], 2, "--batch is 0"),
    ([*G, "--guidance", "nan"], 2, "nan"),
    ([*G, "--steps", "0"], 2, "--steps is 0"),
    ([*G, "--seed", "-1"], 2, "--seed is -1"),
    ([*G, "--sampler", "heun"], 2, "'heun'"),
    (["ddpm", "generate", "{file}", "--checkpoint", "{ckpt}"], 2, "is an existing file"),
    (["ddpm", "generate", "{gen_stray}", "--checkpoint", "{ckpt}", "--steps", "1"], 2, "notes.txt"),
    (["ddpm", "generate", "/proc/hw2", "--checkpoint", "{ckpt}"], 2, "/proc"),
    (["ddpm", "generate"], 2, "Missing argument"),
    (["ddpm", "grid", "--out", "{file}", "--checkpoint", "{ckpt}"], 2, "is an existing file"),
    (["ddpm", "grid", "--dataset", "x", "--checkpoint", "{ckpt}"], 2, "'x'"),
    (["ddpm", "grid", "--steps", "0", "--checkpoint", "{ckpt}"], 2, "--steps is 0"),
    (["ddpm", "trajectory", "--checkpoint", "{ckpt}", "--timesteps", "a,b"], 2, "'a,b'"),
    (["ddpm", "trajectory", "--checkpoint", "{ckpt}", "--timesteps", "0,5000"], 2, "5000"),
    (["ddpm", "trajectory", "--checkpoint", "{ckpt}", "--out", "{root}/traj.txt"], 2, "traj.txt"),
    (["ddpm", "trajectory", "--checkpoint", "{ckpt}", "--out", "{empty}"], 2, "is an existing folder"),
    (["ddpm", "trajectory", "--checkpoint", "{ckpt}", "--digit", "10"], 2, "--digit is 10"),
    (["ddpm", "eval", "{missing}"], 2, "does-not-exist"),
    (["ddpm", "eval", "{empty}"], 2, "is not a folder"),
    (["ddpm", "eval", "{gen_badname}"], 2, "x_001.png"),
    (["ddpm", "eval", "{gen_badname}", "--mnistm-checkpoint", "{trunc_st}"], 2, "truncated or corrupt"),
    (["ddpm", "eval", "{gen_badname}", "--mnistm-checkpoint", "{evil}"], 2, "refused"),
    (["ddpm", "eval", "{gen_badname}", "--mnistm-checkpoint", "{missing}"], 2, "does-not-exist"),
    # --- classifier
    (["classifier", "train", "--data", "{digits}", "--dataset", "cifar"], 2, "'cifar'"),
    (["classifier", "train", "--data", "{digits}", "--dataset", "mnistm", "--arch", "vgg"], 2, "'vgg'"),
    (["classifier", "train", "--data", "{digits}", "--dataset", "mnistm", "--epochs", "0"], 2, "--epochs is 0"),
    (["classifier", "train", "--data", "{digits}", "--dataset", "mnistm", "--lr", "nan"], 2, "nan"),
    (["classifier", "train", "--data", "{digits}", "--dataset", "mnistm", "--batch", "0"], 2, "--batch is 0"),
    (["classifier", "train", "--data", "{digits}", "--dataset", "mnistm", "--out", "{root}/c.txt"], 2, "c.txt"),
    (
        [
            "classifier",
            "train",
            "--data",
            "{digits}",
            "--dataset",
            "mnistm",
            "--out",
            "{root}/c.safetensors",
            "--resume",
        ],
        2,
        "holds no unfinished classifier run",
    ),
    # --- ddim sample
    (["ddim", "sample", "{missing}", "{root}/o"], 2, "does-not-exist"),
    (["ddim", "sample", "{file}", "{root}/o"], 2, "is a file"),
    (["ddim", "sample", "{empty}", "{root}/o"], 2, "holds no .pt noise files"),
    (["ddim", "sample", "{nan_noise}", "{root}/o", "--checkpoint", "{ckpt}"], 2, "NaN"),
    ([*D, "--eta", "-1"], 2, "--eta is -1"),
    ([*D, "--eta", "nan"], 2, "nan"),
    ([*D, "--eta", "inf"], 2, "inf"),
    ([*D, "--steps", "0"], 2, "--steps is 0"),
    ([*D, "--steps", "1001"], 2, "--steps is 1001"),
    ([*D, "--batch", "0"], 2, "--batch is 0"),
    ([*D, "--normalize", "tanh"], 2, "'tanh'"),
    ([*D, "--alpha-prev", "prev"], 2, "'prev'"),
    ([*D, "--final-alpha", "zero"], 2, "'zero'"),
    ([*D, "--digit", "11"], 2, "--digit is 11"),
    ([*D, "--seed", "-4"], 2, "--seed is -4"),
    (["ddim", "sample", "{noise}", "{root}/o", "--unet", "{empty}"], 2, "is a folder"),
    (["ddim", "sample", "{noise}", "{root}/o", "--unet", "{missing}"], 2, "does not exist"),
    (["ddim", "sample", "{noise}", "{root}/o", "--unet", "{evil}"], 2, "refused"),
    (["ddim", "sample", "{noise}", "{file}", "--checkpoint", "{ckpt}"], 2, "is an existing file"),
    (["ddim", "sample", "{noise}", "{root}/o", "--checkpoint", "{ckpt}", "--cuda-graph"], 1, "CUDA"),
    # --- ddim eta-grid / interpolate / eval
    (["ddim", "eta-grid", "--etas", ","], 2, "','"),
    (["ddim", "eta-grid", "--etas", "a"], 2, "'a'"),
    (["ddim", "eta-grid", "--etas", "0,nan"], 2, "'nan'"),
    (["ddim", "eta-grid", "--etas", "0,-1"], 2, "-1"),
    (["ddim", "eta-grid", "--etas", ",".join(["0.5"] * 101)], 2, "101 values"),
    (["ddim", "eta-grid", "--count", "0"], 2, "--count is 0"),
    (["ddim", "eta-grid", "--count", "-2"], 2, "--count is -2"),
    (["ddim", "eta-grid", "--out", "{root}/grid.txt"], 2, "grid.txt"),
    (["ddim", "interpolate", "--alphas", "0:1:1e-9"], 2, "frames; at most 1000"),
    (["ddim", "interpolate", "--alphas", "1:0:0.1"], 2, "'1:0:0.1'"),
    (["ddim", "interpolate", "--alphas", "0:1:0"], 2, "'0:1:0'"),
    (["ddim", "interpolate", "--alphas", "a,b"], 2, "'a,b'"),
    (["ddim", "interpolate", "--alphas", "0:nan:0.1"], 2, "'0:nan:0.1'"),
    (["ddim", "interpolate", "--alphas", "0:1"], 2, "'0:1'"),
    (["ddim", "interpolate", "--mode", "cubic"], 2, "'cubic'"),
    (["ddim", "interpolate", "--eta", "nan"], 2, "nan"),
    (["ddim", "interpolate", "--out", "{root}/i.txt"], 2, "i.txt"),
    (["ddim", "interpolate", "{noise}/00.pt", "--checkpoint", "{ckpt}"], 2, "give both noise files"),
    (["ddim", "eval", "{missing}", "{gt}"], 2, "does-not-exist"),
    (["ddim", "eval", "{empty}", "{missing}"], 2, "does-not-exist"),
    (["ddim", "eval", "{empty}", "{gt}"], 2, "holds no .png"),
    # --- clip eval
    (["clip", "eval", "--data", "{empty}", "--backend", "tensorflow"], 2, "'tensorflow'"),
    (["clip", "eval", "--data", "{empty}", "--batch", "0"], 2, "--batch is 0"),
    (["clip", "eval", "--data", "{empty}", "--workers", "-1"], 2, "--workers is -1"),
    (["clip", "eval", "--data", "{empty}", "--examples", "0"], 2, "--examples is 0"),
    (["clip", "eval", "--data", "{empty}", "--precision", "fp8"], 2, "'fp8'"),
    (["clip", "eval", "--data", "{empty}", "--show-classes", "-1"], 2, "--show-classes is -1"),
    (["clip", "eval", "--data", "{missing}"], 2, "does-not-exist"),
    (["clip", "eval", "--data", "{empty}", "--out", "{file}"], 2, "is an existing file"),
    (["clip", "eval", "--data", "{refs}/0", "--labels", "{missing}"], 2, "does-not-exist"),
    # --- personalize train
    ([*PT, "--steps", "0"], 2, "--steps is 0"),
    ([*PT, "--lr", "nan"], 2, "nan"),
    ([*PT, "--kv-lr", "inf"], 2, "inf"),
    ([*PT, "--batch", "0"], 2, "--batch is 0"),
    ([*PT, "--resolution", "33"], 2, "--resolution is 33"),
    ([*PT, "--resolution", "0"], 2, "--resolution is 0"),
    ([*PT, "--method", "lora"], 2, "'lora'"),
    ([*PT, "--checkpoint-every", "0"], 2, "--checkpoint-every is 0"),
    ([*PT, "--seed", "-1"], 2, "--seed is -1"),
    ([*PT, "--out", "{file}"], 2, "is an existing file"),
    (["personalize", "train", "--model", "{root}/sd.ckpt", "--concept", "new1={refs}/0:dog"], 2, "new1="),
    (["personalize", "train", "--model", "{root}/sd.ckpt", "--concept", "<new1>={missing}:dog"], 2, "does-not-exist"),
    (["personalize", "train", "--model", "{root}/sd.ckpt", "--concept", "<new1>={refs}/0"], 2, "initialiser"),
    (["personalize", "train", "--model", "{root}/sd.ckpt", "--concept", "<new1>={empty}:dog"], 2, "holds no images"),
    ([*PT, "--out", "{root}/p3run", "--resume"], 2, "holds no saved training state"),
    ([*PT, "--out", "{p3_evil}", "--resume"], 2, "refused"),
    ([*PT[:4]], 2, "--concept"),
    # --- personalize generate
    (["personalize", "generate", "--model", "{root}/sd.ckpt"], 2, "give the input.json"),
    (["personalize", "generate", "{json_string_prompt}", "{root}/p3", "--model", "x.ckpt"], 2, "got str"),
    (["personalize", "generate", "{json_escape_key}", "{root}/p3", "--model", "x.ckpt"], 2, "'../../evil'"),
    (["personalize", "generate", "{json_abs_key}", "{root}/p3", "--model", "x.ckpt"], 2, "'/tmp/x'"),
    (["personalize", "generate", "{json_bad_token}", "{root}/p3", "--model", "x.ckpt"], 2, "'<../x>'"),
    (["personalize", "generate", "{json_no_token}", "{root}/p3", "--model", "x.ckpt"], 2, "'token_name'"),
    (["personalize", "generate", "{json_lengths}", "{root}/p3", "--model", "x.ckpt"], 2, "baseline has 2"),
    (["personalize", "generate", "{json_empty}", "{root}/p3", "--model", "x.ckpt"], 2, "maps no concept"),
    (["personalize", "generate", "{json_list}", "{root}/p3", "--model", "x.ckpt"], 2, "object"),
    (["personalize", "generate", "{json_invalid}", "{root}/p3", "--model", "x.ckpt"], 2, "not valid JSON"),
    (["personalize", "generate", "{json_empty_prompts}", "{root}/p3", "--model", "x.ckpt"], 2, "'prompt'"),
    (["personalize", "generate", "{json_nan_baseline}", "{root}/p3", "--model", "x.ckpt"], 2, "baseline"),
    (["personalize", "generate", "{missing}", "{root}/p3", "--model", "x.ckpt"], 2, "does-not-exist"),
    ([*PG, "--batch", "0"], 2, "--batch is 0"),
    ([*PG, "--resolution", "33"], 2, "--resolution is 33"),
    ([*PG, "--steps", "0"], 2, "--steps is 0"),
    ([*PG, "--guidance", "nan"], 2, "nan"),
    ([*PG, "--sampler", "euler"], 2, "'euler'"),
    ([*PG, "--seed", "-1"], 2, "--seed is -1"),
    ([*PG, "--embeds", "{missing}"], 2, "does-not-exist"),
    (["personalize", "generate", "--prompt", "A dog.", "-n", "-1", "--model", "x.ckpt"], 2, "-n is -1"),
    (["personalize", "generate", "{json_good}", "{file}", "--model", "x.ckpt"], 2, "is an existing file"),
    (["personalize", "generate", "{root}/a", "{root}/b", "--prompt", "A dog.", "--model", "x.ckpt"], 2, "--prompt"),
    (["personalize", "generate", "--prompt", "A dog.", "--model", "{missing}.ckpt"], 2, "does-not-exist"),
    (["personalize", "generate", "--prompt", "A dog.", "--model", "{empty}"], 2, "model_index.json"),
    # --- personalize eval
    (["personalize", "eval", "{root}/p3", "{missing}", "--refs", "{refs}"], 2, "does-not-exist"),
    (["personalize", "eval", "{root}/p3", "{json_no_eval}", "--refs", "{refs}"], 2, "prompt_4_clip_eval"),
    (["personalize", "eval", "{missing}", "{json_good}", "--refs", "{refs}"], 2, "does-not-exist"),
    (["personalize", "eval", "{empty}", "{json_good}", "--refs", "{missing}"], 2, "does-not-exist"),
    (
        ["personalize", "eval", "{empty}", "{json_good}", "--refs", "{refs}"],
        2,
        "does not exist: the grader reads the images of concept",
    ),
    # --- bench
    (["bench", "kernels", "--repeats", "0"], 2, "--repeats is 0"),
    (["bench", "kernels", "--dtype", "fp8"], 2, "'fp8'"),
    (["bench", "sample", "--model", "vae"], 2, "'vae'"),
    (["bench", "sample", "--batch", "0"], 2, "--batch is 0"),
    (["bench", "sample", "--steps", "0"], 2, "--steps is 0"),
    (["bench", "sample", "--repeats", "-1"], 2, "--repeats is -1"),
]


def _fill(arg: str, env: dict[str, Path]) -> str:
    return arg.format(**{k: str(v) for k, v in env.items()})


@pytest.mark.parametrize(("args", "code", "word"), ROWS, ids=[" ".join(r[0])[:60] for r in ROWS])
def test_bad_input(run_cli, env, args, code, word):
    filled = [_fill(a, env) for a in args]
    r = run_cli("--device", "cpu", "--weights-dir", str(env["root"] / "cache"), *filled)
    assert r.code == code, (r.code, r.err)
    assert "Traceback" not in r.err and "unexpected" not in r.err, r.err
    message = " ".join(r.err.split())
    assert _fill(word, env) in message, r.err
    assert r.err.count("Error:") == 1, r.err  # one sentence, not a cascade
    assert not env["marker"].exists(), "a crafted pickle ran code"


def test_the_table_covers_every_command():
    seen = {tuple(a for a in row[0] if not a.startswith("-"))[:2] for row in ROWS}
    for command in (
        ("data", "synth"),
        ("data", "mnistm"),
        ("data", "svhn"),
        ("data", "check"),
        ("ddpm", "train"),
        ("ddpm", "sample"),
        ("ddpm", "generate"),
        ("ddpm", "grid"),
        ("ddpm", "trajectory"),
        ("ddpm", "eval"),
        ("classifier", "train"),
        ("ddim", "sample"),
        ("ddim", "eta-grid"),
        ("ddim", "interpolate"),
        ("ddim", "eval"),
        ("clip", "eval"),
        ("personalize", "train"),
        ("personalize", "generate"),
        ("personalize", "eval"),
        ("bench", "kernels"),
        ("bench", "sample"),
    ):
        assert any(s[: len(command)] == command for s in seen), command
    assert len(ROWS) >= 120
