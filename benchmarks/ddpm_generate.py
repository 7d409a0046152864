"""`hw2 ddpm generate` (1,000 images) with the default sampler against a TeaPearce-style 400-step
DDPM sampler, in one run: seconds, images/s and the P1 accuracy of each folder.

    python benchmarks/ddpm_generate.py [--checkpoint PATH] [--repeats 3] [--device cpu]

Writes benchmarks/results/ddpm_generate.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import median_time, write_result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--configs", default="dpm:20,ddim:50,ddpm:400")
    args = parser.parse_args()

    import torch

    from hw2cli import settings
    from hw2cli.io.checkpoints import load_model
    from hw2cli.runtime import setup
    from hw2cli.tasks.ddpm import generate_graded
    from hw2cli.tasks.grading import evaluate_generated

    settings.set_current(*settings.load({"device": args.device}))
    device, _ = setup()
    model = load_model(args.checkpoint, device)
    rows = []
    for spec in args.configs.split(","):
        sampler, steps = spec.split(":")
        out = Path(tempfile.mkdtemp(prefix=f"bench_{sampler}_"))

        def run(out: Path = out, sampler: str = sampler, steps: int = int(steps)) -> None:
            shutil.rmtree(out, ignore_errors=True)
            generate_graded(model, out, sampler=sampler, steps=steps)
            if device.type == "cuda":
                torch.cuda.synchronize()

        med, times = median_time(run, repeats=args.repeats, warmup=0 if device.type == "cpu" else 1)
        score = evaluate_generated(out, device, {"mnistm": None, "svhn": None})
        rows.append(
            {
                "sampler": sampler,
                "steps": int(steps),
                "seconds_median": med,
                "seconds_all": times,
                "images_per_second": 1000 / med,
                "accuracy_mnistm": score["scores"]["mnistm"].accuracy,
                "accuracy_svhn": score["scores"]["svhn"].accuracy,
                "accuracy_mean": score["mean_accuracy"],
            }
        )
        shutil.rmtree(out, ignore_errors=True)
        r = rows[-1]
        print(
            f"{sampler:5s} {steps:>4s} steps  {med:7.1f} s  {r['images_per_second']:7.1f} img/s  "
            f"acc mnistm {r['accuracy_mnistm']:.2%} svhn {r['accuracy_svhn']:.2%} mean {r['accuracy_mean']:.2%}"
        )
    base = rows[-1]["seconds_median"]
    for r in rows:
        r["speedup_vs_last"] = base / r["seconds_median"]
    print("wrote", write_result("ddpm_generate", {"model": model.source, "device": str(device), "rows": rows}))


if __name__ == "__main__":
    main()
