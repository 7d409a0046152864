"""`hw2 ddpm generate` (1,000 graded images): the guided teacher's 20-step DPM-Solver++, each
speed-up alone and combined, the guidance-distilled student, and TeaPearce's ContextUnet with its
400-step sampler, all in one run: seconds, images/s, speed-up and the P1 accuracy of each folder.

    python benchmarks/ddpm_generate.py [--teacher PATH] [--student PATH] [--repeats 3] [--device cpu]
                                       [--rows name,name,...]

Rows marked "key" are timed ``--repeats`` times (median); the others once. TeaPearce's row is an
estimate: its network (n_feat 128, random weights: the time does not depend on them) is timed
on a few guided evaluations of a 100-image batch and the time scaled to 400 steps × 10 batches;
its accuracy is not measured (no trained weights here). The last row times the whole command,
`hw2 ddpm generate OUT` with every default, as a user runs it (process start, imports, PNGs).
The ``-1thread`` row runs on one intra-op thread; the others on torch's default (one per core).
The ``-compile`` row times ``torch.compile`` of the network from a reset, compile included (each
new process pays it), and once more compiled (``seconds_second_run``).

Writes benchmarks/results/ddpm_generate.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import median_time, write_result

# name: (model, sampler, steps, dtype, channels_last, key); "-1thread" and "-compile" rows change one more thing
ROWS = {
    "teacher-dpm20": ("teacher", "dpm", 20, "fp32", False, True),  # the default before the student
    "teacher-dpm6": ("teacher", "dpm", 6, "fp32", False, False),  # fewer steps alone
    "teacher-unipc6": ("teacher", "unipc", 6, "fp32", False, False),
    "teacher-dpm20-nhwc": ("teacher", "dpm", 20, "fp32", True, False),  # channels_last alone
    "teacher-dpm20-bf16": ("teacher", "dpm", 20, "bf16", False, False),  # bf16 autocast alone
    "student-dpm20": ("student", "dpm", 20, "fp32", False, False),  # one evaluation per step alone
    "student-dpm6-nhwc": ("student", "dpm", 6, "fp32", True, True),  # combined: the new default
    "student-dpm6-nhwc-bf16": ("student", "dpm", 6, "bf16", True, False),
    "student-unipc6-nhwc": ("student", "unipc", 6, "fp32", True, False),
    "student-dpm4-nhwc": ("student", "dpm", 4, "fp32", True, False),
    "student-dpm6-nhwc-1thread": ("student", "dpm", 6, "fp32", True, False),  # torch's default: one per core
    "student-dpm6-nhwc-compile": ("student", "dpm", 6, "fp32", True, False),  # torch.compile, compile time included
}


def teapearce_estimate(device, batch: int = 100, evaluations: int = 5) -> dict:
    """Seconds for 1,000 images with TeaPearce's sampler (400 steps, guided: a doubled batch)."""
    import torch

    from hw2cli.diffusion.wrappers import ContextUnetEps
    from hw2cli.models import ContextUnet

    net = ContextUnetEps(ContextUnet(3, 128, 20), 400).to(device).eval()
    x = torch.randn(2 * batch, 3, 28, 28, device=device)
    t = torch.full((2 * batch,), 200, device=device)
    c = torch.cat([torch.arange(batch) % 20, torch.full((batch,), 20)]).to(device)

    def run() -> None:
        with torch.inference_mode():
            net(x, t, c)

    per_eval, times = median_time(run, repeats=evaluations, warmup=1)
    total = per_eval * 400 * (1000 // batch)
    return {"seconds_per_guided_evaluation": per_eval, "evaluations_timed": times, "seconds_estimate": total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default=None, help="default: the embedded teacher")
    parser.add_argument("--student", default=None, help="default: the embedded default (the student)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", default=",".join([*ROWS, "teapearce", "command"]))
    args = parser.parse_args()

    import torch

    from hw2cli import settings
    from hw2cli.io.checkpoints import default_checkpoint, load_model
    from hw2cli.runtime import setup
    from hw2cli.tasks.ddpm import default_steps, generate_graded
    from hw2cli.tasks.grading import evaluate_generated

    settings.set_current(*settings.load({"device": args.device}))
    device, _ = setup()
    teacher = args.teacher or default_checkpoint("digit_ddpm_teacher.safetensors")
    models = {"teacher": load_model(teacher, device), "student": load_model(args.student, device)}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    rows = []
    default_threads = torch.get_num_threads()
    state = Path(tempfile.mkdtemp(prefix="bench_state_"))
    for name in wanted:
        if name not in ROWS:
            continue
        which, sampler, steps, dtype, nhwc, key = ROWS[name]
        threads = 1 if name.endswith("-1thread") else default_threads
        torch.set_num_threads(threads)
        model = models[which]
        compiled = name.endswith("-compile")
        if compiled:  # a fresh compile with an empty on-disk cache, as a user's first run: the time includes it
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_inductor_")
            torch._dynamo.reset()
            model = dataclasses.replace(model, net=torch.compile(model.net))
        out = Path(tempfile.mkdtemp(prefix=f"bench_{name}_"))

        def run(out: Path = out, model=model, sampler=sampler, steps=steps, dtype=dtype, nhwc=nhwc) -> None:
            shutil.rmtree(out, ignore_errors=True)
            generate_graded(model, out, sampler=sampler, steps=steps, dtype=dtypes[dtype], channels_last=nhwc,
                            resume=False, state_dir=state)  # fmt: skip
            if device.type == "cuda":
                torch.cuda.synchronize()

        med, times = median_time(run, repeats=args.repeats if key else 1, warmup=0 if device.type == "cpu" else 1)
        warm = None
        if compiled:  # the same compiled network again: what compiling buys once it is paid for
            warm, _ = median_time(run, repeats=1, warmup=0)
        torch.set_num_threads(default_threads)
        score = evaluate_generated(out, device, {"mnistm": None, "svhn": None})
        rows.append(
            {
                "row": name,
                "model": which,
                "sampler": sampler,
                "steps": steps,
                "evaluations_per_step": 1 if getattr(model.net, "guidance_distilled", False) else 2,
                "dtype": dtype,
                "channels_last": nhwc,
                "threads": threads,
                "torch_compile": compiled,
                **({"seconds_second_run": warm} if warm is not None else {}),
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
        extra = f" (second compiled run {warm:.1f} s)" if warm is not None else ""
        print(f"{name:24s} {med:7.1f} s ({len(times)} runs){extra}  {r['images_per_second']:6.1f} img/s  "
              f"mnistm {r['accuracy_mnistm']:.2%} svhn {r['accuracy_svhn']:.2%} mean {r['accuracy_mean']:.2%}",
              flush=True)  # fmt: skip
    if "teapearce" in wanted:
        est = teapearce_estimate(device)
        seconds = est["seconds_estimate"]
        rows.append(
            {
                "row": "teapearce-ddpm400",
                "model": "TeaPearce ContextUnet (n_feat 128)",
                "sampler": "ddpm",
                "steps": 400,
                "evaluations_per_step": 2,
                "estimate": True,
                **est,
                "seconds_median": seconds,
                "images_per_second": 1000 / seconds,
            }
        )
        per = est["seconds_per_guided_evaluation"]
        print(f"teapearce-ddpm400 ≈ {seconds:.0f} s (estimate: {per:.3f} s per guided evaluation of 100 images)")
    if "command" in wanted:
        out = Path(tempfile.mkdtemp(prefix="bench_cmd_")) / "out"
        cmd = [sys.executable, "-m", "hw2cli", "-q", "--device", args.device, "ddpm", "generate", str(out),
               "--no-resume"]  # fmt: skip

        def whole() -> None:
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(cmd, check=True, capture_output=True)

        med, times = median_time(whole, repeats=args.repeats, warmup=0)
        student = models["student"]
        rows.append({"row": "command", "command": "hw2 ddpm generate OUT", "seconds_median": med,
                     "seconds_all": times, "images_per_second": 1000 / med,
                     "default_steps": default_steps(student, "dpm")})  # fmt: skip
        print(f"hw2 ddpm generate OUT (whole process) {med:.1f} s ({len(times)} runs)", flush=True)
    base = next((r["seconds_median"] for r in rows if r["row"] == "teacher-dpm20"), None)
    if base:
        for r in rows:
            r["speedup_vs_teacher_dpm20"] = base / r["seconds_median"]
    path = write_result("ddpm_generate", {"teacher": str(teacher), "student": models["student"].source,
                                          "device": str(device), "rows": rows})  # fmt: skip
    print("wrote", path)


if __name__ == "__main__":
    main()
