"""File I/O shared by every task: atomic writes, images, grids."""

from hw2cli.io.atomic import (
    atomic_path,
    save_image,
    save_safetensors,
    torch_save,
    write_bytes,
    write_json,
    write_text,
)

__all__ = [
    "atomic_path",
    "save_image",
    "save_safetensors",
    "torch_save",
    "write_bytes",
    "write_json",
    "write_text",
]
