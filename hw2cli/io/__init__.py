"""File I/O shared by every task.

* ``atomic``: every write (temporary name, rename, confined to the output folder, stale
  temporaries of dead processes removed);
* ``checkpoints``: our safetensors checkpoints, the homework's ``.pt`` files read with
  ``weights_only=True``, and the model loaders every task shares;
* ``images``: uint8 conversion, grids, figures; ``manifest``: the settings a resumable
  ``generate`` checks before it keeps earlier images.
"""

from hw2cli.io.atomic import (
    atomic_path,
    save_image,
    save_safetensors,
    write_bytes,
    write_json,
    write_text,
)

__all__ = [
    "atomic_path",
    "save_image",
    "save_safetensors",
    "write_bytes",
    "write_json",
    "write_text",
]
