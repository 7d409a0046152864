"""P3a: CLIP zero-shot on a tiny open_clip model built in code (and a tiny transformers CLIP), offline."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hw2cli.pretrained.clip import load_clip
from hw2cli.pretrained.tokenizer import write_clip_tokenizer_files
from hw2cli.tasks.clip import (
    CIFAR_TEMPLATES,
    ensemble_text_features,
    make_prompts,
    resolve_templates,
)

ID2LABEL = {"0": "apple", "1": "pine_tree", "2": "sweet_pepper", "3": "aquarium_fish", "4": "bus", "5": "cloud"}
COLOURS = [(220, 30, 30), (20, 140, 40), (240, 200, 20), (30, 60, 220), (240, 140, 0), (235, 235, 245)]
PER_CLASS = 3
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def weights_dir(tmp_path, monkeypatch):
    """Each test's own cache (the settings' default weights_dir is fixed when hw2cli.settings is imported)."""
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HW2_DEVICE", "cpu")  # the reference computations below run in fp32 on the CPU
    return tmp_path / "weights"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny open_clip model from a registered config, its weights in a local file."""
    import open_clip

    root = tmp_path_factory.mktemp("tiny_clip")
    config = root / "hw2-tiny-clip.json"
    config.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("hw2-tiny-clip")
    from safetensors.torch import save_file

    weights = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return {"config": config, "weights": weights, "model": model.eval(), "preprocess": preprocess}


def _image(colour, seed):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def homework(tmp_path_factory):
    """The homework layout: val/<classid>_<idx>.png and id2label.json beside val/."""
    root = tmp_path_factory.mktemp("clip_zeroshot")
    (root / "id2label.json").write_text(json.dumps(ID2LABEL))
    val = root / "val"
    val.mkdir()
    for cid, colour in enumerate(COLOURS):
        for k in range(PER_CLASS):
            _image(colour, 10 * cid + k).save(val / f"{cid}_{k}.png")
    return val


def _args(tiny, data, out, *extra):
    return ["clip", "eval", "--data", data, "--model", tiny["config"], "--pretrained", tiny["weights"],
            "--workers", "0", "--batch", "4", "--out", out, *extra]  # fmt: skip


def _reference(tiny, files, classnames, templates):
    """Features straight from the open_clip model, per image, and the prediction by hand."""
    import open_clip

    model, preprocess = tiny["model"], tiny["preprocess"]
    tokenizer = open_clip.get_tokenizer("hw2-tiny-clip")
    with torch.no_grad():
        img = torch.cat([model.encode_image(preprocess(Image.open(f).convert("RGB"))[None]) for f in files])
        img = img / img.norm(dim=-1, keepdim=True)
        per_class = []
        for name in classnames:
            t = model.encode_text(tokenizer([tpl.replace("{}", name.replace("_", " ")) for tpl in templates]))
            t = t / t.norm(dim=-1, keepdim=True)
            mean = t.mean(dim=0)
            per_class.append(mean / mean.norm())
        text = torch.stack(per_class)
        logits = model.logit_scale.exp() * img @ text.T
    return logits.argmax(dim=1), logits.topk(5, dim=1).indices


def _read_predictions(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_homework_layout_matches_an_independent_computation(run_cli, tiny, homework, tmp_path):
    r = run_cli(*_args(tiny, homework, tmp_path, "--json"))
    assert r.code == 0, r.err
    metrics = json.loads(r.out)
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())
    files = sorted(homework.glob("*.png"), key=lambda f: [int(x) for x in f.stem.split("_")])
    classnames = list(ID2LABEL.values())
    top1, top5 = _reference(tiny, files, classnames, ["a photo of a {}."])
    labels = torch.tensor([int(f.name.split("_")[0]) for f in files])
    assert metrics["top1"] == pytest.approx(float((top1 == labels).float().mean()))
    assert metrics["top5"] == pytest.approx(float((top5 == labels[:, None]).any(dim=1).float().mean()))
    assert metrics["images"] == len(files) and metrics["classes"] == 6 and metrics["layout"] == "homework"
    rows = _read_predictions(tmp_path / "predictions.csv")
    assert [row["file"] for row in rows] == [f.name for f in files]
    assert [row["predicted"] for row in rows] == [classnames[i] for i in top1.tolist()]
    assert [row["top5"].split(";") for row in rows] == [[classnames[i] for i in t] for t in top5.tolist()]
    assert all(row["true"] == ID2LABEL[row["file"].split("_")[0]] and 0 < float(row["confidence"]) <= 1 for row in rows)
    accs = [c["accuracy"] for c in metrics["per_class"]]
    assert accs == sorted(accs) and sum(c["count"] for c in metrics["per_class"]) == len(files)
    with Image.open(tmp_path / "examples.png") as fig:
        assert fig.format == "PNG" and fig.size[0] > 200
    wrong = len(files) - round(metrics["top1"] * len(files))
    assert len(metrics["examples"]["incorrect"]) == min(5, wrong)
    assert metrics["images_per_s"] > 0


def test_human_output_tables(run_cli, tiny, homework, tmp_path):
    r = run_cli(*_args(tiny, homework, tmp_path, "--templates", "cifar"))
    assert r.code == 0, r.err
    assert "per-class accuracy, worst first" in r.out and "top-1" in r.out and "top-5" in r.out
    assert "18 template(s) (cifar)" in r.err and "text features:" in r.err


def test_ensemble_is_normalise_mean_renormalise(tiny, tmp_path):
    import open_clip

    clip = load_clip(tiny["config"], tiny["weights"], "open_clip", "cpu", tmp_path)
    templates = ["a photo of a {}.", "a blurry photo of the {}.", "itap of a {}."]
    classes = ["pine_tree", "bus"]
    got = ensemble_text_features(clip, classes, templates)
    tokenizer = open_clip.get_tokenizer("hw2-tiny-clip")
    with torch.no_grad():
        feats = tiny["model"].encode_text(tokenizer(make_prompts(classes, templates))).view(2, 3, -1)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    expected = feats.mean(dim=1)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert make_prompts(["pine_tree"], ["a {} here"]) == ["a pine tree here"]
    assert resolve_templates("single") == ("single", ["a photo of a {}."])
    assert resolve_templates("cifar")[1] == list(CIFAR_TEMPLATES) and len(CIFAR_TEMPLATES) == 18
    imagenet = resolve_templates("imagenet")[1]
    assert len(imagenet) == 80 and all("{}" in t for t in imagenet)
    assert clip.logit_scale == pytest.approx(float(tiny["model"].logit_scale.detach().exp()))


def test_text_features_are_cached(run_cli, tiny, homework, tmp_path, monkeypatch):
    from hw2cli.pretrained.clip import ClipModel

    r = run_cli(*_args(tiny, homework, tmp_path / "a", "--json"))
    assert r.code == 0, r.err
    assert json.loads(r.out)["text_cache"] == "miss"

    def no_text_tower(*args, **kwargs):
        raise AssertionError("the text tower ran on a cache hit")

    with monkeypatch.context() as m:
        m.setattr(ClipModel, "encode_texts", no_text_tower)
        r2 = run_cli(*_args(tiny, homework, tmp_path / "b", "--json"))
    assert r2.code == 0, r2.err
    assert json.loads(r2.out)["text_cache"] == "hit" and "cache hit" in r2.err
    assert json.loads(r2.out)["top1"] == json.loads(r.out)["top1"]
    more = tmp_path / "more.json"
    more.write_text(json.dumps({**ID2LABEL, "6": "rocket"}))
    r3 = run_cli(*_args(tiny, homework, tmp_path / "c", "--json", "--labels", more))
    assert r3.code == 0, r3.err
    assert json.loads(r3.out)["text_cache"] == "miss" and json.loads(r3.out)["classes"] == 7
    r4 = run_cli(*_args(tiny, homework, tmp_path / "d", "--json", "--templates", "cifar"))
    assert json.loads(r4.out)["text_cache"] == "miss"


def test_imagefolder_and_csv_layouts(run_cli, tiny, homework, tmp_path):
    r = run_cli(*_args(tiny, homework, tmp_path / "hw"))
    assert r.code == 0, r.err
    expected = {row["file"]: row["predicted"] for row in _read_predictions(tmp_path / "hw" / "predictions.csv")}
    tree = tmp_path / "tree"
    for f in homework.glob("*.png"):
        (tree / ID2LABEL[f.name.split("_")[0]]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tree / ID2LABEL[f.name.split("_")[0]] / f.name)
    r = run_cli(*_args(tiny, tree, tmp_path / "tree_out", "--json"))
    assert r.code == 0, r.err
    assert json.loads(r.out)["layout"] == "imagefolder"
    got = {
        row["file"].split("/")[1]: row["predicted"]
        for row in _read_predictions(tmp_path / "tree_out" / "predictions.csv")
    }
    assert got == expected  # class order differs (sorted names), the predictions do not

    images = tmp_path / "imgs"
    images.mkdir()
    lines = ["path,label"]
    for i, f in enumerate(sorted(homework.glob("*.png"))):
        shutil.copy(f, images / f.name)
        cid = f.name.split("_")[0]
        lines.append(f"imgs/{f.name},{ID2LABEL[cid] if i % 2 else cid}")  # class names and class ids both work
    table = _write(tmp_path / "list.csv", "\n".join(lines) + "\n")
    r = run_cli(*_args(tiny, table, tmp_path / "csv_out", "--json", "--labels", homework.parent / "id2label.json"))
    assert r.code == 0, r.err
    assert json.loads(r.out)["layout"] == "csv"
    rows = _read_predictions(tmp_path / "csv_out" / "predictions.csv")
    assert {row["file"].split("/")[1]: row["predicted"] for row in rows} == expected


def _write(path, data: bytes | str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-id", "class id 9 of 9_0.png is not in"),
        ("empty", "holds no images"),
        ("unreadable", "cannot read image"),
        ("bad-name", "is not named <classid>_<idx>.png"),
        ("templates", "line 2: template 'a photo' has no {} where the class name goes"),
        ("backend", "--backend is 'tensorflow'; expected one of 'open_clip', 'transformers'"),
        ("no-labels", "no id2label.json beside or inside"),
        ("parent", "holds no images and one sub-folder, val; pass --data"),
        ("csv-missing", "image nope.png does not exist"),
        ("pretrained", "--pretrained 'not_a_tag' is neither a pretrained tag of hw2-tiny-clip"),
    ],
)
def test_bad_input_is_a_usage_error(run_cli, tiny, homework, tmp_path, case, message):
    data = tmp_path / "clip_zeroshot" / "val"
    data.mkdir(parents=True)
    _write(tmp_path / "clip_zeroshot" / "id2label.json", json.dumps(ID2LABEL))
    extra: list = []
    if case == "missing-id":
        _image(COLOURS[0], 0).save(data / "9_0.png")
    elif case == "unreadable":
        shutil.copy(homework / "0_0.png", data / "0_0.png")
        _write(data / "1_0.png", b"not a png at all")
    elif case == "bad-name":
        _image(COLOURS[0], 0).save(data / "apple.png")
    elif case == "templates":
        shutil.copy(homework / "0_0.png", data / "0_0.png")
        extra = ["--templates", _write(tmp_path / "t.txt", "a photo of a {}.\na photo\n")]
    elif case == "backend":
        extra = ["--backend", "tensorflow"]
    elif case == "no-labels":
        (tmp_path / "clip_zeroshot" / "id2label.json").unlink()
        shutil.copy(homework / "0_0.png", data / "0_0.png")
    elif case == "csv-missing":
        data = _write(tmp_path / "clip_zeroshot" / "list.csv", "path,label\nnope.png,apple\n")
    elif case == "pretrained":
        shutil.copy(homework / "0_0.png", data / "0_0.png")
    elif case == "parent":
        shutil.copy(homework / "0_0.png", data / "0_0.png")
        data = data.parent
    args = _args(tiny, data, tmp_path / "out", *extra)
    if case == "pretrained":
        args[args.index("--pretrained") + 1] = "not_a_tag"
    r = run_cli(*args)
    assert r.code == 2, (r.code, r.err)
    assert message in " ".join(r.err.split()), r.err
    assert "Traceback" not in r.err


def _pt(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny["model"].state_dict(), path)
    return path


def test_checkpoint_that_does_not_fit(run_cli, tiny, homework, tmp_path):
    state = {k: v for k, v in tiny["model"].state_dict().items() if k != "text_projection"}
    torch.save(state, tmp_path / "broken.pt")
    args = _args(tiny, homework, tmp_path / "o")
    args[args.index("--pretrained") + 1] = tmp_path / "broken.pt"
    r = run_cli(*args)
    assert r.code == 2 and "does not fit hw2-tiny-clip" in r.err, r.err


@pytest.mark.parametrize("kind", ["truncated-pt", "truncated-safetensors", "garbage-pt"])
def test_a_corrupt_checkpoint_is_called_corrupt_not_a_misfit(run_cli, tiny, homework, tmp_path, kind):
    if kind == "truncated-pt":
        data = _pt(tiny, tmp_path).read_bytes()
        bad = tmp_path / "cut.pt"
    elif kind == "truncated-safetensors":
        data = tiny["weights"].read_bytes()
        bad = tmp_path / "cut.safetensors"
    else:
        data, bad = b"\x80\x04garbage" * 50, tmp_path / "garbage.pt"
    bad.write_bytes(data[: len(data) // 2] if kind.startswith("truncated") else data)
    args = _args(tiny, homework, tmp_path / "o")
    args[args.index("--pretrained") + 1] = bad
    r = run_cli(*args)
    assert r.code == 2, r.err
    assert "truncated or corrupt" in r.err and "does not fit" not in r.err and "weights_only" not in r.err, r.err


def test_openai_named_checkpoint_uses_quick_gelu(run_cli, tiny, homework, tmp_path):
    openai = shutil.copy(_pt(tiny, tmp_path), tmp_path / "tiny-openai.pt")
    r = run_cli(*_args(tiny, homework, tmp_path / "o"))
    assert r.code == 0 and "QuickGELU" not in r.err
    args = _args(tiny, homework, tmp_path / "o2")
    args[args.index("--pretrained") + 1] = openai
    r = run_cli(*args)
    assert r.code == 0 and "QuickGELU" in r.err, r.err
    clip = load_clip(tiny["config"], openai, "open_clip", "cpu", tmp_path, quick_gelu=False)
    assert not clip.notes


def test_an_unreachable_hub_fails_in_seconds_not_after_retries(run_cli, homework, tmp_path, monkeypatch):
    import socket
    import time

    from hw2cli.pretrained import hub

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # recorded, so the switch to "1" is undone after the test
    hub._reachable.cache_clear()
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    r = run_cli("clip", "eval", "--data", homework, "--model", "ViT-B-32", "--pretrained", "openai", "--out", tmp_path)
    seconds = time.perf_counter() - start
    assert r.code == 1, r.err
    err = " ".join(r.err.split())
    assert "cannot be reached from here" in err and "--pretrained PATH" in err, err
    assert seconds < 10, seconds
    r = run_cli("clip", "eval", "--data", homework, "--backend", "transformers", "--out", tmp_path)
    assert r.code == 1 and "cannot be reached from here" in " ".join(r.err.split())
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the hub library was switched to its offline mode
    hub._reachable.cache_clear()


def test_no_weights_offline_is_a_run_error_with_the_how_to(run_cli, homework, tmp_path, monkeypatch):
    monkeypatch.setenv("HW2_OFFLINE", "1")
    r = run_cli("clip", "eval", "--data", homework, "--model", "ViT-B-32", "--pretrained", "openai", "--out", tmp_path)
    assert r.code == 1, r.err
    err = " ".join(r.err.split())
    assert "the ViT-B-32/openai weights are not in the cache and offline mode is on" in err
    assert "--pretrained PATH" in err and "the cache is" in err and "Traceback" not in r.err
    r = run_cli("clip", "eval", "--data", homework, "--backend", "transformers", "--out", tmp_path)
    err = " ".join(r.err.split())  # the same words for either backend
    assert r.code == 1 and "openai/clip-vit-base-patch32 is not in the weights cache and offline mode is on" in err


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A tiny transformers CLIP saved with a tokenizer derived from open_clip's BPE."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny_hf")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                     "num_hidden_layers": 1, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1,
                       "image_size": 32, "patch_size": 16},
        projection_dim=16,
    )  # fmt: skip
    model = CLIPModel(config).eval()
    full = root / "full"
    model.save_pretrained(full)
    files = write_clip_tokenizer_files(root / "tok")
    CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt")).save_pretrained(full)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(full)
    bare = root / "bare"
    model.save_pretrained(bare)  # no tokenizer or preprocessor files: derived ones are used
    return {"full": full, "bare": bare, "tok": files, "model": model}


def test_tokenizer_files_match_open_clip(tiny_hf):
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    ours = CLIPTokenizer(str(tiny_hf["tok"] / "vocab.json"), str(tiny_hf["tok"] / "merges.txt"))
    reference = SimpleTokenizer()
    for prompt in ["a photo of a pine tree.", "A blurry photo of the Aquarium_Fish!", "itap of a {}, 3x"]:
        assert ours(prompt)["input_ids"] == [reference.sot_token_id, *reference.encode(prompt), reference.eot_token_id]
    assert len(ours) == 49408


def test_transformers_backend(run_cli, tiny_hf, homework, tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    r = run_cli("clip", "eval", "--data", homework, "--backend", "transformers", "--model", tiny_hf["full"],
                "--workers", "0", "--out", tmp_path / "a", "--json")  # fmt: skip
    assert r.code == 0, r.err
    metrics = json.loads(r.out)
    assert metrics["backend"] == "transformers" and metrics["images"] == len(ID2LABEL) * PER_CLASS
    assert (tmp_path / "a" / "examples.png").is_file()

    clip = load_clip(tiny_hf["bare"], None, "transformers", "cpu", tmp_path)
    assert any("tokenizer derived" in n for n in clip.notes)
    images = [Image.open(f).convert("RGB") for f in sorted(homework.glob("*.png"))[:3]]
    feats = clip.encode_images(images)
    text = clip.encode_texts(["a photo of a bus."])
    ids = SimpleTokenizer()("a photo of a bus.")
    with torch.no_grad():
        out = tiny_hf["model"](
            input_ids=ids[:, : int((ids[0] != 0).sum())],
            pixel_values=torch.stack([clip.preprocess(im) for im in images]),
        )
    torch.testing.assert_close(clip.logit_scale * feats @ text.T, out.logits_per_image, rtol=1e-4, atol=1e-4)


def test_torchscript_checkpoint_loads_like_openai_release(run_cli, tiny, homework, tmp_path):
    """OpenAI's own ViT-B-32.pt is a TorchScript archive: recognised, QuickGELU on, weights intact."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(tiny["model"]).save(str(tmp_path / "tiny-jit.pt"))
    args = _args(tiny, homework, tmp_path / "o")
    args[args.index("--pretrained") + 1] = tmp_path / "tiny-jit.pt"
    r = run_cli(*args)
    assert r.code == 0 and "QuickGELU" in r.err, r.err
    jit = load_clip(tiny["config"], tmp_path / "tiny-jit.pt", "open_clip", "cpu", tmp_path, quick_gelu=False)
    ref = load_clip(tiny["config"], tiny["weights"], "open_clip", "cpu", tmp_path)
    torch.testing.assert_close(jit.encode_texts(["a photo of a bus."]), ref.encode_texts(["a photo of a bus."]))


def test_a_torchscript_checkpoint_that_would_run_code_is_refused_without_running_it(tiny, homework, tmp_path):
    """torch.jit.load compiles an archive's code and runs its __setstate__ (its print reaches the
    process's stdout); hw2 reads the tensors only, in a process of its own here."""
    import subprocess
    import sys
    import warnings

    from test_checkpoints import _RunsCodeWhenLoaded

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_RunsCodeWhenLoaded()).save(str(tmp_path / "evil.pt"))
    args = [str(a) for a in _args(tiny, homework, tmp_path / "o")]
    args[args.index("--pretrained") + 1] = str(tmp_path / "evil.pt")
    proc = subprocess.run([sys.executable, "-m", "hw2cli", "--device", "cpu", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and "holds no tensors" in proc.stderr, proc.stderr
    assert "RAN" not in proc.stdout + proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_features_match_fp32(run_cli, tiny, homework, tmp_path, monkeypatch):
    cpu = load_clip(tiny["config"], tiny["weights"], "open_clip", "cpu", tmp_path)
    gpu = load_clip(tiny["config"], tiny["weights"], "open_clip", "cuda", tmp_path).set_precision(torch.float16)
    assert gpu.precision == "float16"
    images = [Image.open(f).convert("RGB") for f in sorted(homework.glob("*.png"))]
    cos = (cpu.encode_images(images) * gpu.encode_images(images).cpu()).sum(dim=1)
    assert cos.min() > 0.99
    monkeypatch.setenv("HW2_DEVICE", "cuda")
    r = run_cli(*_args(tiny, homework, tmp_path / "o", "--json", "--workers", "2"))
    assert r.code == 0, r.err
    assert "float16" in r.err and json.loads(r.out)["images"] == len(ID2LABEL) * PER_CLASS


def test_broken_links_and_folders_named_like_images_are_named_not_dropped_silently(run_cli, tiny, homework, tmp_path):
    val = tmp_path / "clip_zeroshot" / "val"
    shutil.copytree(homework, val)
    shutil.copy(homework.parent / "id2label.json", val.parent / "id2label.json")
    (val / "2_99.png").symlink_to(tmp_path / "gone.png")  # a dangling link
    (val / "3_99.png").mkdir()
    r = run_cli(*_args(tiny, val, tmp_path / "out", "--json"))
    assert r.code == 0, r.err
    assert "left out 2 paths named like an image that is not a file" in " ".join(r.err.split())
    assert "2_99.png" in r.err
    metrics = json.loads(r.out)
    assert metrics["images"] == len(list(homework.glob("*.png")))
    assert sorted(Path(p).name for p in metrics["left_out"]) == ["2_99.png", "3_99.png"]


def test_an_interrupted_report_leaves_the_earlier_report_whole(run_cli, tiny, homework, tmp_path, monkeypatch):
    """The three report files move into the folder together: a stop while the figure is drawn
    (after predictions.csv is made) keeps the earlier run's three files, not a mix of two runs."""
    import hw2cli.tasks.clip as clip_task

    assert run_cli(*_args(tiny, homework, tmp_path)).code == 0
    names = ("predictions.csv", "metrics.json", "examples.png")
    before = {name: (tmp_path / name).read_bytes() for name in names}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(clip_task, "examples_figure", stopped)
    r = run_cli(*_args(tiny, homework, tmp_path, "--templates", "cifar"))
    assert r.code == 130, r.err
    assert {name: (tmp_path / name).read_bytes() for name in names} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    assert run_cli(*_args(tiny, homework, tmp_path, "--templates", "cifar")).code == 0
    assert (tmp_path / "predictions.csv").read_bytes() != before["predictions.csv"]
    assert json.loads((tmp_path / "metrics.json").read_text())["templates"]["name"] == "cifar"


# --------------------------------------------------------------------------- refused up front (audit F11, F16-F19)


def _hf_args(tiny_hf, data, out, *extra):
    return ["clip", "eval", "--data", data, "--backend", "transformers", "--model", tiny_hf["full"],
            "--workers", "0", "--out", out, *extra]  # fmt: skip


def _refused(r, message):
    assert r.code == 2, (r.code, r.err)
    assert message in " ".join(r.err.split()), r.err
    assert "Traceback" not in r.err


@pytest.mark.parametrize("backend", ["open_clip", "transformers"])
def test_a_template_that_pushes_the_class_name_past_the_context_is_refused(
    run_cli, tiny, tiny_hf, homework, tmp_path, backend
):
    """Past CLIP's 77 tokens every class's prompt is the same text: top-1 would be chance, said as a result."""
    args = _args if backend == "open_clip" else (lambda _, *a: _hf_args(tiny_hf, *a))
    long = _write(tmp_path / "t12.txt", " ".join(["word"] * 100) + " a photo of a {}.\n")
    r = run_cli(*args(tiny, homework, tmp_path / "o", "--templates", long))
    _refused(
        r, f"{long} line 1: with the class name 'apple' the prompt is 108 tokens, more than CLIP's 77; shorten it."
    )
    assert not (tmp_path / "o").exists()
    # text after the class name may be cut off: every class still has its own prompt
    tail = _write(tmp_path / "tail.txt", "a photo of a {}.\na photo of a {}. " + " ".join(["word"] * 100) + "\n")
    r = run_cli(*args(tiny, homework, tmp_path / "o2", "--templates", tail, "--json"))
    assert r.code == 0, r.err
    assert json.loads(r.out)["templates"]["count"] == 2


def test_a_class_name_too_long_for_a_built_in_template_is_refused(run_cli, tiny, tmp_path):
    val = tmp_path / "cz" / "val"
    val.mkdir(parents=True)
    long_name = " ".join(["very"] * 80) + " long name"
    _write(val.parent / "id2label.json", json.dumps({"0": "apple", "1": long_name}))
    for k in range(2):
        _image(COLOURS[k], k).save(val / f"{k}_0.png")
    r = run_cli(*_args(tiny, val, tmp_path / "o", "--templates", "cifar"))
    _refused(r, "the cifar template 'a photo of a {}.': with the class name 'very very")
    assert "the prompt is 89 tokens, more than CLIP's 77; shorten the class name." in " ".join(r.err.split())


@pytest.mark.parametrize("backend", ["open_clip", "transformers"])
def test_classes_the_tokenizer_cannot_tell_apart_are_refused(run_cli, tiny, tiny_hf, tmp_path, backend):
    val = tmp_path / "cz" / "val"
    val.mkdir(parents=True)
    _write(val.parent / "id2label.json", json.dumps({"0": "apple", "1": "bus", "2": "Apple"}))  # CLIP lowercases
    for k in range(3):
        _image(COLOURS[k], k).save(val / f"{k}_0.png")
    args = _args if backend == "open_clip" else (lambda _, *a: _hf_args(tiny_hf, *a))
    r = run_cli(*args(tiny, val, tmp_path / "o"))
    _refused(r, "the single template 'a photo of a {}.': the classes 'apple' and 'Apple' give the same tokens")


def test_every_template_that_makes_two_classes_tokenize_alike_is_refused(tiny, tmp_path):
    """Against the model's own tokenizer output, at every length around the context: whenever two
    classes' prompts tokenize identically the templates are refused, and a refusal names a cut-off class."""
    import open_clip

    from hw2cli.errors import UsageError
    from hw2cli.tasks.clip import check_prompts, prompt_tokenizer

    clip = load_clip(tiny["config"], tiny["weights"], "open_clip", "cpu", tmp_path)
    tokenizer = prompt_tokenizer(clip)
    assert tokenizer is not None and tokenizer.context_length == 77
    reference = open_clip.get_tokenizer("hw2-tiny-clip")
    classes = ["apple", "pine_tree", "pine_cone", "sweet_pepper"]
    refused_at = []
    for n in range(60, 80):
        template = " ".join(["word"] * n) + " a photo of a {}."
        tokens = reference(make_prompts(classes, [template]))
        same = any(torch.equal(tokens[i], tokens[j]) for i in range(len(classes)) for j in range(i))
        try:
            check_prompts(tokenizer, classes, [template], [f"t.txt line {n}"], from_file=True)
        except UsageError as exc:
            refused_at.append(n)
            assert f"t.txt line {n}: with the class name" in str(exc)
        else:
            assert not same, n
    # 'pine' is cut from 'pine tree' before 'pine' is cut: refused while 'pine tree' and 'pine cone' still differ
    assert refused_at == list(range(min(refused_at), 80)) and min(refused_at) < 72


@pytest.mark.parametrize("where", ["same", "inside", "link"])
def test_a_report_folder_in_the_data_folder_is_refused(run_cli, tiny, homework, tmp_path, where):
    val = tmp_path / "cz" / "val"
    shutil.copytree(homework, val)
    shutil.copy(homework.parent / "id2label.json", val.parent / "id2label.json")
    out = {"same": val, "inside": val / "report", "link": tmp_path / "link"}[where]
    if where == "link":
        out.symlink_to(val)
    r = run_cli(*_args(tiny, val, out))
    _refused(r, f"--out {out} is inside the --data folder {val}; choose another folder.")
    assert sorted(p.name for p in val.iterdir()) == sorted(p.name for p in homework.iterdir())


def test_duplicate_class_ids_images_and_templates_are_refused(run_cli, tiny, homework, tmp_path):
    val = tmp_path / "cz" / "val"
    shutil.copytree(homework, val)
    text = json.dumps(ID2LABEL)[:-1] + ', "0": "pear"}'  # JSON allows it; the last one would win
    labels = _write(val.parent / "id2label.json", text)
    _refused(run_cli(*_args(tiny, val, tmp_path / "o")), f"{labels}: class id '0' appears more than once")
    _write(labels, json.dumps({**ID2LABEL, "00": "pear"}))
    _refused(
        run_cli(*_args(tiny, val, tmp_path / "o")),
        f"{labels}: class id 0 appears more than once ('0' and '00' are one id)",
    )

    table = _write(
        tmp_path / "list.csv", "path,label\ncz/val/0_0.png,0\ncz/val/0_1.png,0\n\n./cz/../cz/val/0_0.png,1\n"
    )
    r = run_cli(*_args(tiny, table, tmp_path / "o", "--labels", homework.parent / "id2label.json"))
    _refused(r, f"{table} lines 2 and 5 both list the image ./cz/../cz/val/0_0.png; list each once.")

    templates = _write(tmp_path / "t.txt", "a photo of a {}.\n# a comment\nitap of a {}.\n  a photo of a {}.\n")
    r = run_cli(*_args(tiny, homework, tmp_path / "o", "--templates", templates))
    _refused(r, f"{templates} lines 1 and 4 hold the same template 'a photo of a {{}}.'; keep one")
    assert not (tmp_path / "o").exists()


def test_folders_and_foreign_json_are_called_what_they_are(run_cli, tiny, homework, tmp_path):
    args = _args(tiny, homework, tmp_path / "o")
    args[args.index("--pretrained") + 1] = tmp_path
    r = run_cli(*args)
    _refused(r, f"--pretrained {tmp_path} is a folder; pass a checkpoint file (.pt, .bin or .safetensors)")
    assert "does not exist" not in r.err

    table = _write(tmp_path / "list.csv", f"path,label\n{homework}/0_0.png,0\n{homework},1\n")
    r = run_cli(*_args(tiny, table, tmp_path / "o", "--labels", homework.parent / "id2label.json"))
    _refused(r, f"{table} line 3: {homework} is a folder, not an image")
    assert "does not exist" not in r.err

    cases = [
        ("{}", "it lacks embed_dim, vision_cfg and text_cfg"),
        ('{"embed_dim": 16}', "it lacks vision_cfg and text_cfg"),
        ("[1]", "it holds a JSON list"),
    ]
    for text, says in cases:
        config = _write(tmp_path / "x.json", text)
        args = _args(tiny, homework, tmp_path / "o")
        args[args.index("--model") + 1] = config
        r = run_cli(*args)
        _refused(r, f"--model {config} is not an open_clip model config: {says}")
        assert "is not an open_clip model name" not in r.err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_a_bad_image_is_named_before_the_model_loads(run_cli, tiny, homework, tmp_path, kind):
    val = tmp_path / "cz" / "val"
    shutil.copytree(homework, val)
    shutil.copy(homework.parent / "id2label.json", val.parent / "id2label.json")
    whole = (homework / "5_2.png").read_bytes()
    bad = _write(val / "5_2.png", b"notpng\n" if kind == "text" else whole[: len(whole) // 2])
    broken = _write(tmp_path / "cut.safetensors", tiny["weights"].read_bytes()[:100])  # would fail to load
    args = _args(tiny, val, tmp_path / "o")
    args[args.index("--pretrained") + 1] = broken
    r = run_cli(*args)
    _refused(r, f"cannot read image {bad} (")
    assert "remove or replace the file" in r.err and "truncated or corrupt" not in r.err and "on cpu" not in r.err
