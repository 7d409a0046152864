"""P3a speed: images/s of the batched zero-shot path against a plain per-image loop, same model, one run.

    python benchmarks/clip_zeroshot.py [--images 256] [--side 64] [--batch 64] [--workers 2] [--repeats 3] [--threads N]

No real CLIP weights are needed (none can be downloaded here): a small ViT CLIP is built in code
(224² input, patch 32, width 128, 2 layers per tower; random weights, which do not change the
time) and a folder of PNGs is written to a temporary directory. Paths, each the median of
``--repeats`` after one warm-up:

- ``per-image loop``: open, preprocess, ``encode_image`` one image at a time under ``no_grad``;
- ``batched``: :func:`hw2cli.tasks.clip.encode_image_files` (``inference_mode``, batches of
  ``--batch``) decoding in this process;
- ``batched + workers``: the same with ``--workers`` DataLoader processes decoding.

Also times the class text features (100 classes × the 18 CIFAR templates) computed against read
back from the on-disk cache. Writes benchmarks/results/clip_zeroshot.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from _common import median_time, write_result

CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "head_width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--side", type=int, default=64, help="Side of the PNGs on disk.")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's].")
    args = parser.parse_args()

    import numpy as np
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from hw2cli.pretrained.clip import load_clip
    from hw2cli.tasks.clip import CIFAR_TEMPLATES, class_text_features, encode_image_files

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = tmp / "bench-clip.json"
        config.write_text(json.dumps(CONFIG))
        open_clip.add_model_config(config)
        torch.manual_seed(0)
        module = open_clip.create_model("bench-clip")
        weights = tmp / "bench-clip.safetensors"
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(weights))
        clip = load_clip(config, weights, "open_clip", device, tmp / "cache", offline=True)

        rng = np.random.default_rng(0)
        folder = tmp / "val"
        folder.mkdir()
        files = []
        for i in range(args.images):
            path = folder / f"{i % 100}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (args.side, args.side, 3), dtype=np.uint8)).save(path)
            files.append(path)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        def per_image() -> None:
            with torch.no_grad():
                for f in files:
                    with Image.open(f) as im:
                        x = clip.preprocess(im.convert("RGB"))[None].to(device)
                    feats = clip.module.encode_image(x)
                    feats / feats.norm(dim=-1, keepdim=True)
            sync()

        def batched(workers: int):
            def run() -> None:
                encode_image_files(clip, files, batch_size=args.batch, num_workers=workers)
                sync()

            return run

        paths = [("per-image loop", per_image), ("batched", batched(0))]
        if args.workers > 0:
            paths.append((f"batched + {args.workers} workers", batched(args.workers)))
        rows = []
        for name, fn in paths:
            med, times = median_time(fn, repeats=args.repeats, warmup=1)
            rows.append({"path": name, "seconds": med, "images_per_s": args.images / med, "all": times})
        for row in rows:
            row["speedup_vs_per_image"] = row["images_per_s"] / rows[0]["images_per_s"]

        classnames = [f"class {i}" for i in range(100)]
        count = iter(range(10**6))

        def text_miss() -> None:
            class_text_features(clip, classnames, CIFAR_TEMPLATES, tmp / f"miss{next(count)}")

        def text_hit() -> None:
            class_text_features(clip, classnames, CIFAR_TEMPLATES, tmp / "hit")

        text_hit()  # fills the cache
        miss_s, _ = median_time(text_miss, repeats=args.repeats, warmup=0)
        hit_s, _ = median_time(text_hit, repeats=args.repeats, warmup=0)

    threads = torch.get_num_threads()
    print(
        f"CLIP zero-shot images: {args.images} PNGs of {args.side}², model 224²/patch 32, {device}, {threads} threads"
    )
    print(f"{'path':24s} {'seconds':>9s} {'images/s':>10s} {'speed-up':>9s}")
    for row in rows:
        print(
            f"{row['path']:24s} {row['seconds']:9.3f} {row['images_per_s']:10.1f} {row['speedup_vs_per_image']:8.2f}×"
        )
    n_templates = len(CIFAR_TEMPLATES)
    print(f"text features, 100 classes × {n_templates} templates: computed {miss_s:.3f} s, cache hit {hit_s:.4f} s")
    info = {
        "images": args.images,
        "side": args.side,
        "batch": args.batch,
        "workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "model": CONFIG,
        "rows": rows,
        "text_features": {
            "classes": 100,
            "templates": len(CIFAR_TEMPLATES),
            "computed_s": miss_s,
            "cache_hit_s": hit_s,
        },
    }
    print("wrote", write_result("clip_zeroshot", info))


if __name__ == "__main__":
    main()
