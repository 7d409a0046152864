"""Checkpoint format: safetensors + config, legacy .pth, clear errors for the wrong file."""

from __future__ import annotations

import json
import re

import pytest
import torch

from hw2cli.diffusion.wrappers import build_network
from hw2cli.errors import UsageError
from hw2cli.io.checkpoints import DiffusionConfig, load_checkpoint, save_checkpoint
from hw2cli.models import ContextUnet

SMALL = {"base_channels": 8, "head_dim": 8, "groups": 4, "channel_mult": [1, 2], "attention_levels": [1]}


def small_config() -> DiffusionConfig:
    return DiffusionConfig(model=dict(SMALL))


def test_roundtrip_needs_no_flags_and_works_from_the_file_alone(tmp_path):
    torch.manual_seed(0)
    config = small_config()
    net = build_network(config)
    path = save_checkpoint(net, config, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["architecture"] == "DigitUNet"
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(path.read_bytes())  # no config.json beside it: the metadata suffices
    for source in (tmp_path / "run", path, lone):
        loaded, cfg = load_checkpoint(source)
        assert cfg.model["base_channels"] == 8
        for k, v in net.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v)


def test_half_precision_checkpoint_loads_into_fp32(tmp_path):
    config = small_config()
    net = build_network(config)
    save_checkpoint(net, config, tmp_path, half=True)
    loaded, _ = load_checkpoint(tmp_path)
    w = next(loaded.parameters())
    assert w.dtype == torch.float32


@pytest.mark.parametrize("wrapped", [False, True])
def test_legacy_teapearce_pth(tmp_path, wrapped):
    torch.manual_seed(1)
    net = ContextUnet(3, 8, 20)
    state = net.state_dict()
    if wrapped:  # TeaPearce's DDPM wrapper: nn_model. prefix plus schedule buffers
        state = {f"nn_model.{k}": v for k, v in state.items()} | {"sqrtab": torch.ones(401)}
    torch.save(state, tmp_path / "model_19.pth")
    model, cfg = load_checkpoint(tmp_path / "model_19.pth")
    assert cfg.architecture == "ContextUnet" and cfg.schedule["kind"] == "teapearce"
    assert cfg.data_range == (0.0, 1.0) and cfg.condition_layout == "dataset-major"
    assert torch.equal(model.net.init_conv.conv1[0].weight, net.init_conv.conv1[0].weight)
    # legacy overrides
    _, cfg = load_checkpoint(tmp_path / "model_19.pth", data_range=(-1.0, 1.0))
    assert cfg.data_range == (-1.0, 1.0)


def test_a_checkpoint_with_a_config_refuses_a_contradicting_legacy_override(tmp_path, run_cli):
    """--data-range / --cond-layout describe files without a config; on an hw2 checkpoint they
    would sample from the wrong model (SVHN digits drawn as MNIST strokes), so they are refused."""
    config = small_config()
    path = save_checkpoint(build_network(config), config, tmp_path / "run")
    with pytest.raises(UsageError, match="records its own condition layout"):
        load_checkpoint(path, condition_layout="digit-only")
    _, cfg = load_checkpoint(path, data_range=(-1.0, 1.0), condition_layout=config.condition_layout)  # agrees: fine
    assert cfg.data_range == (-1.0, 1.0)
    r = run_cli("ddpm", "sample", "--digit", "1", "-n", "1", "--out", tmp_path / "s", "--data-range", "01")
    assert r.code == 2 and "records its own data range (-1..1); --data-range is for checkpoints" in r.err


def test_digitunet_pth_without_config_is_a_clear_error(tmp_path):
    torch.save(build_network(small_config()).state_dict(), tmp_path / "x.pth")
    with pytest.raises(UsageError, match="has no config"):
        load_checkpoint(tmp_path / "x.pth")


def test_wrong_architecture_names_the_first_mismatched_key(tmp_path):
    config = small_config()
    save_checkpoint(build_network(config), config, tmp_path)
    bigger = DiffusionConfig(model={**SMALL, "base_channels": 16})
    (tmp_path / "config.json").write_text(json.dumps(bigger.to_dict()))
    # the safetensors metadata wins over config.json; rewrite it through a config-less copy
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(UsageError, match=r"does not fit a DigitUNet: key 'time_mlp.0.weight' has shape \[32, 8\]"):
        load_checkpoint(tmp_path)


CORRUPT = "cannot be read as .* \\(truncated or corrupt"


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a checkpoint", CORRUPT), (b"", CORRUPT)],
)
def test_corrupt_files(tmp_path, content, message):
    for name in ("a.safetensors", "a.pth"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UsageError, match=message):
            load_checkpoint(tmp_path / name)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_condition_layouts():
    cfg = DiffusionConfig()
    assert cfg.condition_index(3, 0) == 3 and cfg.condition_index(3, 1) == 13
    cfg.condition_layout = "digit-major"
    assert cfg.condition_index(3, 1) == 7
    cfg.condition_layout = "digit-only"
    assert cfg.condition_index(3, 1) == 3
    with pytest.raises(UsageError, match="condition_layout"):
        DiffusionConfig.from_dict({"architecture": "DigitUNet", "condition_layout": "weird"})


class _Scripted(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.block = torch.nn.Sequential(torch.nn.LayerNorm(2))
        self.register_buffer("steps", torch.arange(5))
        self.scale = torch.nn.Parameter(torch.randn(2, 4).half())
        self.view = torch.randn(4, 6)[:, 1:4]  # a plain tensor attribute, strided

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.linear(x))


class _RunsCodeWhenLoaded(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("CODE FROM THE ARCHIVE RAN")
        self.w = state[0]
        self.training = state[1]


def test_a_torchscript_archive_is_read_as_torch_jit_load_reads_it(tmp_path):
    import warnings

    from hw2cli.io.checkpoints import is_torchscript, torchscript_state_dict

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_Scripted()).save(str(tmp_path / "m.pt"))
        reference = torch.jit.load(str(tmp_path / "m.pt")).state_dict()
    state = torchscript_state_dict(tmp_path / "m.pt")
    assert is_torchscript(tmp_path / "m.pt") and set(reference) <= set(state) and "view" in state
    for key, value in reference.items():
        assert state[key].dtype == value.dtype and state[key].stride() == value.stride()
        assert torch.equal(state[key], value)
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pt")
    assert not is_torchscript(tmp_path / "plain.pt")


def test_a_torchscript_archive_is_read_without_running_its_code(tmp_path, capfd):
    import warnings

    from hw2cli.io.checkpoints import torchscript_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_RunsCodeWhenLoaded()).save(str(tmp_path / "evil.pt"))
        torch.jit.load(str(tmp_path / "evil.pt"))
    assert "CODE FROM THE ARCHIVE RAN" in capfd.readouterr().out  # what torch.jit.load does with it
    with pytest.raises(UsageError, match="holds no tensors"):
        torchscript_state_dict(tmp_path / "evil.pt")
    assert "RAN" not in capfd.readouterr().out
    (tmp_path / "cut.pt").write_bytes((tmp_path / "evil.pt").read_bytes()[:300])
    with pytest.raises(UsageError, match="cannot be read"):
        torchscript_state_dict(tmp_path / "cut.pt")


class _Smuggled:
    def __reduce__(self):
        import os

        return (os.system, ("echo the file ran",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_raw_pickle_that_would_run_code_is_named_and_refused_quietly(tmp_path, protocol):
    """torch's weights-only unpickler stops at a protocol-4 frame before it sees the import, and
    warns about the protocol; the sentence still names what the file would have run."""
    import pickle
    import warnings

    from hw2cli.io.checkpoints import torch_load
    from hw2cli.tasks.training import check_state_files

    path = tmp_path / "random_states_0.pkl"
    path.write_bytes(pickle.dumps({"rng": _Smuggled()}, protocol=protocol))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UsageError, match=r"holds Python objects \((posix|nt)\.system\)"):
            torch_load(path)
        with pytest.raises(UsageError, match=r"holds Python objects \((posix|nt)\.system\)"):
            check_state_files(tmp_path)
    assert not [w for w in caught if "pickle protocol" in str(w.message)]


def test_a_torchscript_archive_cannot_ask_for_more_memory_than_it_stores(tmp_path):
    """A deflated member would unpack to far more than the file (torch.jit.save stores tensors
    uncompressed), and a storage named many times is read once."""
    import warnings
    import zipfile

    from hw2cli.io.checkpoints import torchscript_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_Scripted()).save(str(tmp_path / "m.pt"))
        torch.jit.script(torch.nn.Sequential(*[torch.nn.Linear(4, 4)] * 2)).save(str(tmp_path / "tied.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no TypedStorage deprecation from the reader
        torchscript_state_dict(tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "m.pt") as src, zipfile.ZipFile(tmp_path / "deflated.pt", "w") as dst:
        for info in src.infolist():
            kind = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info), compress_type=kind)
    with pytest.raises(UsageError, match="stored values"):
        torchscript_state_dict(tmp_path / "deflated.pt")
    state = torchscript_state_dict(tmp_path / "tied.pt")
    assert state["0.weight"].data_ptr() == state["1.weight"].data_ptr()


def _with_metadata(tmp_path, change):
    """The embedded digit model with only its hw2 metadata changed (its tensors intact)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hw2cli.io.checkpoints import default_checkpoint

    with safe_open(str(default_checkpoint()), "pt") as fh:
        meta, state = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    base = json.loads(meta["hw2"])
    path = tmp_path / "changed.safetensors"
    save_file(state, path, metadata={**meta, "hw2": change(base, meta["hw2"])})
    return path


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda b, text: text[: len(text) // 2], "hw2 metadata is not valid JSON"),
        (lambda b, text: "[1, 2]", "hw2 metadata is a JSON list, not an object"),
        (lambda b, text: json.dumps({**b, "model": {**b["model"], "groups": "8"}}), "does not describe a network"),
        (lambda b, text: json.dumps({**b, "schedule": {"kind": "weird"}}), "unknown schedule kind 'weird'"),
        (lambda b, text: json.dumps({**b, "schedule": {"kind": "linear", "num_steps": -5}}), "does not make a noise"),
        (lambda b, text: json.dumps({**b, "extra": {**b["extra"], "sampler_steps": {"dpm": 0}}}), "1 to 1000 steps"),
        (
            lambda b, text: json.dumps({**b, "extra": {**b["extra"], "train": {"guidance_range": [float("nan"), 4]}}}),
            "guidance_range [nan, 4] is not a finite range",
        ),
        (lambda b, text: json.dumps({**b, "data_range": [1, 1]}), "data_range [1.0, 1.0] is empty"),
        (lambda b, text: json.dumps({**b, "format": "hw2-diffusion/9"}), "did a newer hw2 write it?"),
        (lambda b, text: json.dumps({**b, "datasets": ["mnistm", "mnistm"]}), "must be distinct names"),
    ],
)
def test_damaged_checkpoint_metadata_is_one_sentence_naming_the_file(tmp_path, change, said):
    """Each of these was an 'unexpected' exit 1 naming no file, or was taken silently."""
    from hw2cli.io.checkpoints import load_checkpoint

    path = _with_metadata(tmp_path, change)
    with pytest.raises(UsageError, match=re.escape(said)) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    load_checkpoint(_with_metadata(tmp_path, lambda b, text: text))  # unchanged, it loads
