"""Settings sources and their order: option > env > .env > hw2.toml/--config > pyproject > default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hw2cli import settings
from hw2cli.errors import UsageError


def show(run_cli, *args: str) -> dict[str, tuple[str, str]]:
    result = run_cli(*args, "config", "show", "--json")
    assert result.code == 0, result.err
    return {r["name"]: (r["value"], r["source"]) for r in json.loads(result.out)}


def test_defaults(run_cli):
    values = show(run_cli)
    assert values["device"] == ("auto", "default")
    assert values["dtype"] == ("fp32", "default")
    assert values["kernels"] == ("auto", "default")
    assert values["offline"] == ("False", "default")
    assert set(values) == set(settings.Settings.model_fields)


def test_each_source_overrides_the_ones_below(run_cli, monkeypatch):
    cwd = Path.cwd()
    (cwd / "pyproject.toml").write_text('[tool.hw2]\nseed = 1\ndtype = "fp16"\nkernels = "torch"\ndevice = "cpu"\n')
    (cwd / "hw2.toml").write_text('seed = 2\ndtype = "bf16"\nkernels = "triton"\n')
    (cwd / ".env").write_text("HW2_SEED=3\nHW2_DTYPE=fp32\nUNRELATED=1\n")
    monkeypatch.setenv("HW2_SEED", "4")
    values = show(run_cli)
    assert values["device"] == ("cpu", "pyproject.toml")
    assert values["kernels"] == ("triton", "hw2.toml")
    assert values["dtype"] == ("fp32", ".env")
    assert values["seed"] == ("4", "env")
    values = show(run_cli, "--seed", "5")
    assert values["seed"] == ("5", "option")


def test_config_file_option_replaces_hw2_toml(run_cli, tmp_path):
    Path("hw2.toml").write_text("seed = 2\n")
    other = tmp_path / "mine.toml"
    other.write_text('seed = 7\noutput_root = "elsewhere"\n')
    values = show(run_cli, "--config", str(other))
    assert values["seed"] == ("7", str(other))
    assert values["output_root"] == ("elsewhere", str(other))


def test_invalid_env_value_names_the_variable(run_cli, monkeypatch):
    monkeypatch.setenv("HW2_DEVICE", "gpu7")
    result = run_cli("config", "show")
    assert result.code == 2
    assert "HW2_DEVICE is 'gpu7', which is not a valid device" in result.err
    assert "auto, cpu, cuda, cuda:N" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("dotenv", "HW2_DTYPE in .env is 'fp64'"),
        ("toml", "dtype in hw2.toml is 'fp64'"),
        ("pyproject", "dtype in [tool.hw2] of pyproject.toml is 'fp64'"),
        ("option", "--dtype is 'fp64'"),
    ],
)
def test_invalid_value_names_its_source(run_cli, where, expected):
    args = []
    if where == "dotenv":
        Path(".env").write_text("HW2_DTYPE=fp64\n")
    elif where == "toml":
        Path("hw2.toml").write_text('dtype = "fp64"\n')
    elif where == "pyproject":
        Path("pyproject.toml").write_text('[tool.hw2]\ndtype = "fp64"\n')
    else:
        args = ["--dtype", "fp64"]
    result = run_cli(*args, "config", "show")
    assert result.code == 2
    assert expected in result.err
    assert "fp32, bf16 or fp16" in result.err


def test_unknown_key_in_toml_is_an_error(run_cli):
    Path("hw2.toml").write_text('devise = "cpu"\n')
    result = run_cli("config", "show")
    assert result.code == 2
    assert "unknown setting 'devise' in hw2.toml" in result.err


def test_missing_config_file(run_cli):
    result = run_cli("--config", "nope.toml", "config", "show")
    assert result.code == 2
    assert "--config nope.toml: no such file" in result.err


def test_malformed_toml(run_cli):
    Path("hw2.toml").write_text("seed = = 3\n")
    result = run_cli("config", "show")
    assert result.code == 2
    assert "cannot read settings from hw2.toml" in result.err


def test_negative_seed_and_cuda_index_forms():
    with pytest.raises(UsageError, match="expected a whole number from 0 to 4294967295"):
        settings.load({"seed": -1})
    assert settings.load({"device": "cuda:3"})[0].device == "cuda:3"
    assert settings.load({"device": "CPU"})[0].device == "cpu"


def test_offline_sets_hub_variables(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HW2_OFFLINE", "1")
    settings.set_current(*settings.load())
    import os

    assert settings.get().offline is True
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_cache_default_follows_xdg_cache_home_at_run_time(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert settings.load()[0].weights_dir == tmp_path / "xdg" / "hw2"


def test_every_source_is_read_once_and_validated_once(monkeypatch, tmp_path):
    import hw2cli.settings as S

    (tmp_path / "hw2.toml").write_text("seed = 3\n")
    monkeypatch.chdir(tmp_path)
    calls = {"toml": 0, "env": 0}
    real_toml, real_env = S.TomlConfigSettingsSource.__call__, S.EnvSettingsSource.__call__

    def toml(self):  # (the pyproject source is a subclass: count the hw2.toml one)
        calls["toml"] += type(self) is S.TomlConfigSettingsSource
        return real_toml(self)

    def env(self):  # (the .env source is a subclass: count the environment one)
        calls["env"] += type(self) is S.EnvSettingsSource
        return real_env(self)

    monkeypatch.setattr(S.TomlConfigSettingsSource, "__call__", toml)
    monkeypatch.setattr(S.EnvSettingsSource, "__call__", env)
    monkeypatch.setenv("HW2_DTYPE", "bf16")
    settings, origin = S.load()
    assert (settings.seed, settings.dtype) == (3, "bf16") and origin["seed"] == "hw2.toml"
    assert calls == {"toml": 1, "env": 1}


@pytest.mark.parametrize("command", ["grid", "eta-grid"])
def test_the_seed_setting_reaches_the_figure_commands(run_cli, tmp_path, monkeypatch, command):
    """`hw2 --seed 7 …` (or HW2_SEED) draws what `… --seed 7` draws, and other noise than seed 0."""
    monkeypatch.setenv("HW2_WEIGHTS_DIR", str(tmp_path / "cache"))
    if command == "grid":
        args, figure = ["ddpm", "grid", "--dataset", "mnistm", "--steps", "2"], "grid_mnistm.png"
    else:
        args, figure = ["ddim", "eta-grid", "--etas", "0,1", "--count", "2", "--steps", "2", "--no-resume"], "eta.png"

    def draw(name, *extra, before=()):
        out = tmp_path / name
        target = ["--out", out] if command == "grid" else ["--out", out / figure]
        r = run_cli(*before, *args, *target, *extra)
        assert r.code == 0, r.err
        from PIL import Image

        with Image.open(out / figure) as im:  # the pixels (the PNG's text records each command line)
            return im.convert("RGB").tobytes()

    default, option, setting = draw("a"), draw("b", "--seed", "7"), draw("c", before=("--seed", "7"))
    assert option == setting and option != default
    monkeypatch.setenv("HW2_SEED", "7")
    assert draw("d") == option


def test_a_home_folder_in_a_path_setting_is_expanded_and_an_empty_one_refused(run_cli, monkeypatch, tmp_path):
    """No shell reads hw2.toml or .env: ``~`` made a folder named ``~`` in the working folder, and
    an empty value (``HW2_WEIGHTS_DIR=$UNSET``) silently meant the working folder itself."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (Path.cwd() / "hw2.toml").write_text('output_root = "~/outs"\n')
    (Path.cwd() / ".env").write_text("HW2_DATA_ROOT=~/data\n")
    monkeypatch.setenv("HW2_WEIGHTS_DIR", "~/w")
    values = show(run_cli)
    assert values["output_root"] == (str(tmp_path / "home" / "outs"), "hw2.toml")
    assert values["data_root"] == (str(tmp_path / "home" / "data"), ".env")
    assert values["weights_dir"] == (str(tmp_path / "home" / "w"), "env")
    monkeypatch.setenv("HW2_WEIGHTS_DIR", "")
    r = run_cli("config", "show")
    assert r.code == 2 and "HW2_WEIGHTS_DIR is '', which is not a valid weights_dir" in r.err
    monkeypatch.delenv("HW2_WEIGHTS_DIR")
    (Path.cwd() / "hw2.toml").write_text("seed = true\n")
    r = run_cli("config", "show")
    assert r.code == 2 and "seed in hw2.toml is True" in r.err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["ddpm", "sample", "--out", ""], "an empty argument follows --out"),
        (["ddpm", "sample", "--out="], "--out is ''"),
        (["ddim", "eval", "", "gt"], "an argument is ''"),
    ],
)
def test_an_empty_argument_is_refused_before_anything_runs(run_cli, args, said):
    r = run_cli(*args)
    assert r.code == 2 and said in r.err and "is a shell variable empty?" in r.err
    assert list(Path.cwd().iterdir()) == []


def test_a_misspelt_variable_is_named_with_the_one_it_probably_means(run_cli, monkeypatch):
    """hw2.toml refuses an unknown key; a misspelt HW2_ variable was silently nothing."""
    monkeypatch.setenv("HW2_DEVCE", "cpu")
    monkeypatch.setenv("HW2_FOO", "1")
    r = run_cli("config", "show")
    assert r.code == 0
    assert "Warning: HW2_DEVCE is not a variable hw2 reads (did you mean HW2_DEVICE?)." in r.err
    assert "Warning: HW2_FOO is not a variable hw2 reads; hw2 reads HW2_DATA_ROOT," in " ".join(r.err.split())
    monkeypatch.delenv("HW2_DEVCE")
    monkeypatch.delenv("HW2_FOO")
    monkeypatch.setenv("HW2_Device", "cpu")  # read as HW2_DEVICE, whatever its case
    r = run_cli("config", "show")
    assert "Warning" not in r.err and "cpu" in r.out
    monkeypatch.delenv("HW2_Device")
    monkeypatch.setenv("HW2_DEBUG", "1")
    assert "Warning" not in run_cli("config", "show").err  # the CLI's own variables are known
