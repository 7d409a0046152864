"""Checkpoints: the digit diffusion models (``model.safetensors`` plus a small JSON config), the
homework's face UNet, and reading any PyTorch file without running code.

The config (architecture, model hyper-parameters, noise schedule, condition layout, data
range) is written both beside the weights as ``config.json`` and inside the safetensors
metadata, so ``--checkpoint FILE`` needs no other flags. Legacy ``.pth``/``.pt`` state dicts
load too: TeaPearce ``ContextUnet`` checkpoints are recognised by their keys and sized from
their shapes.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hw2cli.diffusion.schedules import NoiseSchedule
from hw2cli.diffusion.wrappers import build_network
from hw2cli.errors import RunError, UsageError
from hw2cli.io.atomic import save_safetensors, write_json

FORMAT = "hw2-diffusion/1"
CONDITION_LAYOUTS = ("dataset-major", "digit-major", "digit-only")


@dataclass
class DiffusionConfig:
    """Everything needed to sample from a checkpoint."""

    architecture: str = "DigitUNet"  # or "ContextUnet"
    model: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=lambda: {"kind": "linear", "num_steps": 1000})
    datasets: list[str] = field(default_factory=lambda: ["mnistm", "svhn"])
    condition_layout: str = "dataset-major"  # index = 10·dataset + digit
    data_range: tuple[float, float] = (-1.0, 1.0)  # pixel values the network was trained on
    extra: dict[str, Any] = field(default_factory=dict)  # training provenance

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "architecture": self.architecture,
            "model": self.model,
            "schedule": self.schedule,
            "datasets": list(self.datasets),
            "condition_layout": self.condition_layout,
            "data_range": list(self.data_range),
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> DiffusionConfig:
        if not isinstance(data, dict):
            raise UsageError(f"{source}'s hw2 metadata is a JSON {type(data).__name__}, not an object; it is damaged.")
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            raise UsageError(
                f"{source} was written in the format {fmt!r}; this hw2 reads {FORMAT!r} (did a newer hw2 write it?)."
            )
        if data.get("architecture") not in ("DigitUNet", "ContextUnet"):
            raise UsageError(
                f"{source} names architecture {data.get('architecture')!r}; expected DigitUNet or ContextUnet."
            )
        layout = data.get("condition_layout", "dataset-major")
        if layout not in CONDITION_LAYOUTS:
            raise UsageError(
                f"{source} has condition_layout {layout!r}; expected one of {', '.join(CONDITION_LAYOUTS)}."
            )
        try:
            config = cls(
                architecture=data["architecture"],
                model=dict(data.get("model", {})),
                schedule=dict(data.get("schedule", {"kind": "linear", "num_steps": 1000})),
                datasets=list(data.get("datasets", ["mnistm", "svhn"])),
                condition_layout=layout,
                data_range=tuple(float(v) for v in data.get("data_range", (-1.0, 1.0))),  # type: ignore[arg-type]
                extra=dict(data.get("extra", {})),
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{source}'s hw2 metadata is damaged ({exc}).") from None
        problem = config._problem()
        if problem is not None:
            raise UsageError(f"{source}'s hw2 metadata is not valid: {problem}.")
        return config

    def _problem(self) -> str | None:
        """What makes this config unusable, in words (``None``: nothing)."""
        import math

        if len(self.data_range) != 2 or not all(math.isfinite(v) for v in self.data_range):
            return f"data_range {list(self.data_range)} is not two finite numbers"
        if not self.data_range[0] < self.data_range[1]:
            return f"data_range {list(self.data_range)} is empty (its low end must be below its high end)"
        if (
            not self.datasets
            or len(set(self.datasets)) != len(self.datasets)
            or not all(isinstance(d, str) and d for d in self.datasets)
        ):
            return f"datasets {self.datasets} must be distinct names"
        try:
            schedule = NoiseSchedule.from_config(self.schedule)
        except Exception as exc:  # an unknown kind, a negative or non-numeric step count
            return f"its schedule {self.schedule} does not make a noise schedule ({exc})"
        if not bool(torch.isfinite(schedule.betas).all()) or schedule.num_steps < 2:
            return f"its schedule {self.schedule} does not make a noise schedule of finite betas"
        steps = self.extra.get("sampler_steps", {})
        if not isinstance(steps, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= schedule.max_sampler_steps
            for v in steps.values()
        ):
            return f"extra.sampler_steps {steps} must give each sampler 1 to {schedule.max_sampler_steps} steps"
        guidance = (self.extra.get("train") or {}).get("guidance_range", (0.0, 4.0))
        try:
            lo, hi = (float(v) for v in guidance)
        except (TypeError, ValueError):
            return f"extra.train.guidance_range {guidance} is not two numbers"
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            return f"extra.train.guidance_range {guidance} is not a finite range"
        return None

    def condition_index(self, digit: int, dataset: int) -> int:
        """The network's condition for (digit, data set index)."""
        if self.condition_layout == "digit-only":
            return digit
        if self.condition_layout == "digit-major":
            return 2 * digit + dataset
        return 10 * dataset + digit


def save_checkpoint(model: nn.Module, config: DiffusionConfig, folder: str | Path, *, half: bool = False) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json``; returns the weights' path."""
    folder = Path(folder)
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    meta = {"hw2": json.dumps(config.to_dict())}
    path = save_safetensors(state, folder / "model.safetensors", metadata=meta)
    write_json(folder / "config.json", config.to_dict())
    return path


def first_mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """A sentence about the first key that does not fit ``module``, or ``None`` if all fit."""
    expected = module.state_dict()
    for key, value in expected.items():
        if key not in state:
            return f"key '{key}' is missing"
        if tuple(state[key].shape) != tuple(value.shape):
            return f"key '{key}' has shape {list(state[key].shape)}, expected {list(value.shape)}"
    for key in state:
        if key not in expected:
            return f"key '{key}' is not part of the network"
    return None


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """``load_state_dict(strict=True)`` with one clear error naming the first mismatched key."""
    problem = first_mismatch(module, state)
    if problem is not None:
        raise UsageError(f"{source} does not fit a {type(module).__name__}: {problem}.")
    for key, value in state.items():  # NaN weights make NaN images, which every image writer turns black
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UsageError(
                f"{source} holds NaN or infinite values in {key!r}: these weights cannot make images (a training run "
                "that diverged, or a damaged file)."
            )
    module.load_state_dict({k: v.to(module.state_dict()[k].dtype) for k, v in state.items()}, strict=True)
    return module


_GLOBAL_RE = re.compile(r"unsupported (?:global: )?GLOBAL ([\w.]+)", re.IGNORECASE)


_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "numpy.", "builtins.set")


def pickled_globals(path: str | Path, limit: int = 1 << 26) -> list[str]:
    """The ``module.name`` globals a raw pickle file imports, read with :mod:`pickletools` (which
    runs nothing): what the weights-only unpickler cannot name when it stops earlier, e.g. at a
    protocol-4 frame. Empty for a zip archive or anything unreadable."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            return []
        with open(path, "rb") as fh:
            data = fh.read(limit)
    except OSError:
        return []
    names: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # truncated or not a pickle: what was read so far
        pass
    return names


def load_error(path: str | Path, what: str, exc: BaseException) -> UsageError:
    """One sentence for a file ``torch.load(weights_only=True)`` (or safetensors) could not read:
    refused Python objects, or a truncated/corrupt file. Never PyTorch's advice to turn the
    protection off."""
    text = str(exc).strip()
    found = _GLOBAL_RE.search(text)
    imported = found.group(1) if found else None
    if isinstance(exc, pickle.UnpicklingError) and imported is None:
        imported = next((g for g in pickled_globals(path) if not g.startswith(_TENSOR_GLOBALS)), None)
    if isinstance(exc, pickle.UnpicklingError) and imported:
        return UsageError(
            f"{path} is not {what}: it holds Python objects ({imported}) that loading would have to run, so "
            "it was refused without running them."
        )
    detail = text.splitlines()[0] if text else type(exc).__name__
    detail = detail.split(". ")[0].removeprefix("Weights only load failed").strip(" .:") or type(exc).__name__
    return UsageError(f"{path} cannot be read as {what} (truncated or corrupt: {detail[:160]}).")


@contextlib.contextmanager
def quiet_pickle_protocol() -> Iterator[None]:
    """Silence torch's "Detected pickle protocol N" warning: the file is refused in one sentence."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        yield


def torch_load(path: str | Path, what: str = "a PyTorch checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True`` onto the CPU; a file it cannot read is one clear
    error naming the file and what it should have been."""
    try:
        with quiet_pickle_protocol():
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; expected {what}.") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder; expected {what}.") from None
    except Exception as exc:
        raise load_error(path, what, exc) from None


# ---------------------------------------------------------------------------- TorchScript archives
# A TorchScript archive (torch.jit.save; OpenAI's original CLIP release) is a zip whose data.pkl
# pickles the module tree as ``__torch__.*`` objects; torch.jit.load compiles the archive's code/
# and runs its __setstate__ methods, so it can run anything. These tensors are read without it:
# data.pkl goes through an unpickler that builds ``__torch__`` objects as inert records of their
# attributes and knows only tensor rebuilding, storages and OrderedDict; code/ is never read.

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}  # fmt: skip


_SCRIPT_LISTS = {
    **{f"build_{kind}list": list for kind in ("int", "double", "bool", "tensor", "generic")},
    "restore_type_tag": lambda value, _type: value,
}


class _ScriptRecord:
    """A ``__torch__`` object as its attributes, nothing run: BUILD hands them to ``__setstate__``."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state


class _ScriptUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: Any, prefix: str) -> None:
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, Any] = {}  # by key: each stored tensor is read once, however often named

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_ScriptRecord,), {})
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2
        if module == "torch.jit._pickle" and name in _SCRIPT_LISTS:  # typed lists: the list itself
            return _SCRIPT_LISTS[name]
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unsupported GLOBAL {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
        import zipfile

        _, dtype, key, _location, numel = pid
        key = str(key)
        if key not in self.storages:
            info = self.archive.getinfo(f"{self.prefix}data/{key}")
            size = int(numel) * dtype.itemsize
            # torch.jit.save stores tensors uncompressed, one member of exactly their size: anything
            # else (a deflated member that would unpack to gigabytes, a size that disagrees) is refused
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != size:
                raise pickle.UnpicklingError(f"storage {key} is not {numel} stored values of {dtype}")
            raw = bytearray(size)
            with self.archive.open(info) as fh:
                if fh.readinto(raw) != size:
                    raise pickle.UnpicklingError(f"storage {key} is shorter than its {size} bytes")
            untyped = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage() if size else torch.UntypedStorage(0)
            self.storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        storage = self.storages[key]
        if storage.dtype != dtype:
            raise pickle.UnpicklingError(f"storage {key} is named as {storage.dtype} and as {dtype}")
        return storage


def is_torchscript(path: str | Path) -> bool:
    """``path`` is a TorchScript archive (a zip with ``code/`` or ``constants.pkl``)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def torchscript_state_dict(path: str | Path, what: str = "a TorchScript archive") -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's module tree, by dotted name (what
    ``torch.jit.load(path).state_dict()`` holds, plus any plain tensor attribute), read without
    compiling or running anything in it."""
    import io
    import zipfile

    def walk(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
        state = obj.__dict__.get("state") if isinstance(obj, _ScriptRecord) else None
        if not isinstance(state, dict):
            return
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                out[prefix + str(key)] = value
            elif isinstance(value, _ScriptRecord):
                walk(value, f"{prefix}{key}.", out)

    try:
        with zipfile.ZipFile(path) as archive:
            (name,) = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            prefix = name[: -len("data.pkl")]
            root = _ScriptUnpickler(io.BytesIO(archive.read(name)), archive, prefix).load()
    except pickle.UnpicklingError as exc:
        raise load_error(path, what, exc) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, RuntimeError, TypeError, AttributeError,
            IndexError, RecursionError, MemoryError) as exc:  # fmt: skip
        raise UsageError(f"{path} cannot be read as {what} (truncated or corrupt: {str(exc)[:160]}).") from None
    state: dict[str, torch.Tensor] = {}
    walk(root, "", state)
    if not state:
        raise UsageError(f"{path} holds no tensors; expected {what}.")
    return state


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    obj = torch_load(path)
    for key in ("ema", "state_dict", "model"):  # common wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path} does not hold a state dict of tensors.")
    # TeaPearce's DDPM wrapper saves the network under `nn_model.` beside the schedule buffers
    if any(k.startswith("nn_model.") for k in obj):
        obj = {k[len("nn_model.") :]: v for k, v in obj.items() if k.startswith("nn_model.")}
    return dict(obj)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:
        raise load_error(path, "a safetensors checkpoint", exc) from None
    try:
        config = json.loads(meta["hw2"]) if "hw2" in meta else None
    except ValueError as exc:
        raise UsageError(f"{path}'s hw2 metadata is not valid JSON ({exc}); the file is damaged.") from None
    return state, config


def load_checkpoint(path: str | Path, **legacy: Any) -> tuple[nn.Module, DiffusionConfig]:
    """Load a checkpoint folder, ``.safetensors`` file or legacy ``.pth``/``.pt`` state dict.

    ``legacy`` overrides config fields for files without a config (e.g. ``data_range``,
    ``condition_layout`` or ``schedule`` of a TeaPearce checkpoint); a checkpoint that records its
    own config refuses an override that contradicts it (it would sample from the wrong model).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise UsageError(
            f"checkpoint {path} does not exist; pass a model.safetensors, a folder holding one, or a .pth."
        )
    config_data: dict[str, Any] | None = None
    if path.suffix == ".safetensors":
        state, config_data = _read_safetensors(path)
    else:
        state = _read_torch_file(path)
    if config_data is None and (path.parent / "config.json").is_file():
        config_data = json.loads((path.parent / "config.json").read_text())
    if config_data is not None:
        config = DiffusionConfig.from_dict(config_data, source=str(path))
        for key, value in legacy.items():
            recorded = getattr(config, key, None)
            if value is not None and value != recorded:
                shown = "..".join(f"{v:g}" for v in recorded) if key == "data_range" else recorded
                if key == "schedule" and isinstance(recorded, dict):
                    shown = ", ".join(f"{k} {v}" for k, v in recorded.items())
                option = {"condition_layout": "cond_layout", "schedule": "n_t"}.get(key, key)  # the option that sets it
                raise UsageError(
                    f"{path} records its own {key.replace('_', ' ')} ({shown}); {{opt:{option}}} is for checkpoints "
                    "without a config, such as TeaPearce .pth files."
                )
    elif "init_conv.conv1.0.weight" in state:
        from hw2cli.models import ContextUnet

        net = ContextUnet.from_state_dict_shapes(state)
        config = DiffusionConfig(
            architecture="ContextUnet",
            model={"in_channels": net.in_channels, "n_feat": net.n_feat, "n_classes": net.n_classes},
            schedule={"kind": "teapearce", "n_T": 400, "beta1": 1e-4, "beta2": 0.02},
            condition_layout="dataset-major" if net.n_classes == 20 else "digit-only",
            data_range=(0.0, 1.0),  # TeaPearce trains on ToTensor() images
        )
    else:
        raise UsageError(
            f"{path} has no config (no hw2 metadata, no config.json beside it) and is not a TeaPearce "
            "ContextUnet state dict; save it with hw2 or put its config.json beside it."
        )
    for key, value in legacy.items():
        if value is not None:
            setattr(config, key, value)
    if config.architecture == "ContextUnet" and config.condition_layout != "digit-only":
        n_classes = config.model.get("n_classes", 20)
        if n_classes < 20:
            raise UsageError(
                f"{path} has {n_classes} classes, too few for 10 digits × 2 data sets; use condition layout digit-only."
            )
    try:
        model = build_network(config)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise UsageError(f"{path}'s hw2 metadata does not describe a network ({type(exc).__name__}: {exc}).") from None
    target = model.net if config.architecture == "ContextUnet" else model  # type: ignore[union-attr]
    load_state_into(target, state, str(path))
    return model.eval(), config


def load_face_unet(path: str | Path, device: torch.device) -> nn.Module:
    """The homework's ``UNet.pt`` (a plain state dict), loaded strictly."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"the face UNet {path} is a folder; pass the UNet.pt file inside it (hw2_data/face/UNet.pt).")
    if not path.is_file():
        raise UsageError(f"the face UNet {path} does not exist; pass the homework's hw2_data/face/UNet.pt.")
    state = torch_load(path, "a PyTorch state dict")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "down1.weight" not in state:
        raise UsageError(f"{path} is not a face UNet state dict (it has no 'down1.weight').")
    width = int(state["down1.weight"].shape[0])
    if width % 32:
        raise UsageError(f"{path} has width {width}; the face UNet's width is a multiple of 32 (official: 128).")
    from hw2cli.models import FaceUNet

    model = FaceUNet(width=width)
    load_state_into(model, state, str(path))
    return model.to(device).eval()


def default_checkpoint(name: str = "digit_ddpm.safetensors") -> Path:
    """The embedded digit model shipped in ``hw2cli/assets`` (``digit_ddpm_teacher.safetensors``:
    the guided teacher the default was distilled from)."""
    return Path(str(resources.files("hw2cli.assets").joinpath(name)))


@dataclass
class DigitModel:
    net: torch.nn.Module
    config: DiffusionConfig
    schedule: NoiseSchedule
    source: str
    device: torch.device
    path: Path | None = None

    @property
    def null_condition(self) -> int:
        return int(self.net.null_condition)  # type: ignore[union-attr]

    def dataset_index(self, name: str) -> int:
        if name not in self.config.datasets:
            raise UsageError(f"this model was trained on {', '.join(self.config.datasets)}, not {name}.")
        return self.config.datasets.index(name)

    def condition(self, digit: int, dataset: str) -> int:
        """The network's condition index for ``digit`` (0-9) of ``dataset``."""
        if not 0 <= digit <= 9:
            raise UsageError(f"the digit is {digit}; expected a digit from 0 to 9.")
        return self.config.condition_index(digit, self.dataset_index(dataset))


def load_model(checkpoint: str | Path | None, device: torch.device, **legacy: Any) -> DigitModel:
    """A digit model checkpoint loaded onto ``device``, or the embedded default for ``None``."""
    if checkpoint is None:
        path = default_checkpoint()
        if not path.exists():
            raise RunError("this install has no embedded digit model; give a checkpoint (hw2 ddpm train makes one).")
        source = "embedded default"
    else:
        path = Path(checkpoint)
        source = str(path)
    net, config = load_checkpoint(path, **legacy)
    return DigitModel(net.to(device), config, NoiseSchedule.from_config(config.schedule), source, device, path)
