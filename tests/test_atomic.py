"""Atomic writes: a failure mid-write leaves the old file (or nothing) and no temporary files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hw2cli.errors import RunError
from hw2cli.io import atomic_path, save_image, save_safetensors, torch_save, write_json


def test_crash_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("crash in the middle")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_interrupt_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "img.png"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"\x89PNG partial")
        raise KeyboardInterrupt
    assert list((tmp_path / "sub").iterdir()) == []


def test_image_formats_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    save_image(hwc, tmp_path / "a.png")
    save_image(torch.from_numpy(hwc).permute(2, 0, 1), tmp_path / "b.png")
    save_image(Image.fromarray(hwc), tmp_path / "c.png")
    for name in "abc":
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{name}.png")), hwc)
    with pytest.raises(RunError, match="cannot tell the image format"):
        save_image(hwc, tmp_path / "a.unknownext")


def test_tensors_roundtrip(tmp_path):
    from safetensors.torch import load_file

    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    save_safetensors(tensors, tmp_path / "m.safetensors", metadata={"arch": "x"})
    loaded = load_file(tmp_path / "m.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    torch_save({"step": 3}, tmp_path / "state.pt")
    assert torch.load(tmp_path / "state.pt")["step"] == 3


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="cannot write to"):
        write_json(blocker / "out.json", {})
