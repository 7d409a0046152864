"""The one prepared GPU run: every measurement the GPU issue asks for, in one call, within a budget.

    python benchmarks/gpu_suite.py OUTDIR [--dry-run] [--budget 360]

Each step runs in its own process with its own time limit (a CUDA error or a hang in one step
does not take the others down) and writes ``OUTDIR/steps/<step>.json``; the suite stops
starting steps when the overall budget is spent and says which it skipped. At the end
``OUTDIR/suite.json`` holds everything and ``OUTDIR/suite.md`` one Markdown table.

``--dry-run`` runs the same steps on this CPU at tiny shapes (CUDA-only steps are skipped with
a note): a check, in CI time, that the suite itself works, so the GPU run needs no editing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# (step, seconds allowed on the GPU) in the order they run: the measurements the targets need first
STEPS = [
    ("env", 60),
    ("kernels_bf16", 100),
    ("sample_face_bf16", 100),
    ("generate", 60),
    ("sample_sd_bf16", 60),
    ("train", 50),
    ("sample_face_fp32", 80),
    ("kernels_fp16", 60),
    ("cuda_tests", 180),
]


# --------------------------------------------------------------------------- the steps


def _device_and_dtype(dry: bool, name: str) -> tuple[Any, Any]:
    import torch

    device = torch.device("cpu" if dry else "cuda")
    return device, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def step_env(dry: bool, out: Path) -> dict[str, Any]:
    from hw2cli import settings
    from hw2cli.runtime import environment_report

    settings.set_current(*settings.load({"device": "cpu" if dry else "cuda"}))
    report = environment_report()
    rows = [{"case": key.removeprefix("auto: "), "path": value.split(" ")[0], "note": value}
            for key, value in report.items() if key.startswith("auto:")]  # fmt: skip
    return {"report": report, "rows": rows}


def _report(report: Any) -> dict[str, Any]:
    return report.to_dict()


def _kernels(dry: bool, dtype_name: str) -> dict[str, Any]:
    from hw2cli.tasks.bench import bench_kernels

    device, dtype = _device_and_dtype(dry, dtype_name)
    if dry:
        shapes = {"group_norm": [(2, 64, 16, 16)], "attention": [("tiny", 2, 2, 64, 64, 32)]}
        return _report(bench_kernels(device, dtype=dtype, repeats=2, use_compile=False, shapes=shapes))
    return _report(bench_kernels(device, dtype=dtype, repeats=10, use_compile=dtype_name == "bf16"))


def step_kernels_bf16(dry: bool, out: Path) -> dict[str, Any]:
    return _kernels(dry, "bf16" if not dry else "fp32")


def step_kernels_fp16(dry: bool, out: Path) -> dict[str, Any]:
    if dry:
        return {"skipped": "fp16 kernels: CUDA only"}
    return _kernels(dry, "fp16")


def _sample(dry: bool, model: str, dtype_name: str, **kw: Any) -> dict[str, Any]:
    from hw2cli.tasks.bench import bench_sample

    device, dtype = _device_and_dtype(dry, dtype_name if not dry else "fp32")
    if dry:
        kw.update(batch=2, steps=2, repeats=1, use_compile=False, side=32, width=32)
    return _report(bench_sample(model, device, dtype=dtype, **kw))


def step_sample_face_bf16(dry: bool, out: Path) -> dict[str, Any]:
    return _sample(dry, "face", "bf16", batch=10, steps=50, repeats=1)


def step_sample_face_fp32(dry: bool, out: Path) -> dict[str, Any]:
    return _sample(dry, "face", "fp32", batch=10, steps=50, repeats=1, use_compile=False, use_graph=False)


def step_sample_sd_bf16(dry: bool, out: Path) -> dict[str, Any]:
    if dry:
        return {"skipped": "the SD v1 UNet (860 M parameters) is not run on a CPU dry run"}
    return _sample(dry, "sd", "bf16", batch=2, steps=20, repeats=1, use_compile=False)


def step_generate(dry: bool, out: Path) -> dict[str, Any]:
    """``hw2 ddpm generate`` (1,000 graded images) per path: eager, Triton kernels, + CUDA graph."""
    import shutil

    import hw2kernels
    import torch

    from hw2cli.io.checkpoints import load_model
    from hw2cli.tasks.bench import median_ms
    from hw2cli.tasks.ddpm import generate_graded

    device, dtype = _device_and_dtype(dry, "fp32")
    model = load_model(None, device)
    per_digit, steps = (1, 2) if dry else (50, None)
    paths = [("eager", "torch", False)]
    if not dry:
        paths += [("triton", "triton", False), ("cuda graph", "torch", True), ("triton + cuda graph", "triton", True)]
    rows = []
    for name, backend, graph in paths:
        folder = out / "generate" / name.replace(" ", "_")

        def run(folder: Path = folder, backend: str = backend, graph: bool = graph) -> None:
            shutil.rmtree(folder, ignore_errors=True)
            hw2kernels.set_default_backend(backend)
            try:
                generate_graded(model, folder, per_digit=per_digit, steps=steps, dtype=dtype, cuda_graph=graph,
                                resume=False, state_dir=out / "state")  # fmt: skip
            finally:
                hw2kernels.set_default_backend("auto")
            if device.type == "cuda":
                torch.cuda.synchronize()

        ms = median_ms(run, device, repeats=1 if dry else 3, warmup=0 if dry else 1)
        rows.append({"case": f"ddpm generate {20 * per_digit} images", "path": name, "ms": ms,
                     "images_per_s": 20 * per_digit / (ms / 1000)})  # fmt: skip
    shutil.rmtree(out / "generate", ignore_errors=True)
    for row in rows:
        row["speedup"] = rows[0]["ms"] / row["ms"]
    return {"rows": rows}


def step_train(dry: bool, out: Path) -> dict[str, Any]:
    """``hw2 ddpm train`` throughput (images/s, bf16 on CUDA) and what the embedded recipe would take."""
    import torch

    from hw2cli.data.synth import synthesize
    from hw2cli.tasks.train_ddpm import TrainOptions, train_ddpm

    device, _ = _device_and_dtype(dry, "fp32")
    synthesize(out / "train_data", per_class=10 if dry else 100, seed=0)
    batch, steps = (8, 6) if dry else (256, 120)
    times: list[float] = []

    def stamp(step: int, metrics: dict[str, float]) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    opts = TrainOptions(data=str(out / "train_data" / "digits"), out=str(out / "train_run"), steps=steps, batch=batch,
                        warmup=5, checkpoint_every=10**9, sample_every=0)  # fmt: skip
    train_ddpm(opts, device=device, on_step=stamp)
    skip = max(1, len(times) // 4)  # leave out the warm-up steps
    per_step = (times[-1] - times[skip]) / (len(times) - 1 - skip)
    images_per_s = batch / per_step
    recipe = 20_000 * 64  # the embedded default: 20,000 steps of 64 images
    note = f"the embedded recipe ({recipe:,} images) would take {recipe / images_per_s / 60:.1f} min"
    path = "bf16 autocast" if device.type == "cuda" else "fp32"
    row = {"case": f"ddpm train, batch {batch}", "path": path, "ms": per_step * 1000, "images_per_s": images_per_s}
    return {"rows": [{**row, "note": note}]}


def step_cuda_tests(dry: bool, out: Path) -> dict[str, Any]:
    """The ``cuda`` tests, all of them (no ``-x``: one GPU session should show every failure), streamed
    to ``cuda_tests.log`` and stopped a little before the step's own limit so the counts survive."""
    if dry:
        return {"skipped": "the cuda tests need CUDA (collected on CPU by `pytest -m cuda --collect-only`)"}
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    # -P: the checkout's kernels/ folder must not become an importable `kernels` (transformers probes that name)
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    cmd = [sys.executable, *safe_path, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-rfE",
           "--tb=short", "--durations=10", f"--junitxml={out / 'cuda_tests.xml'}",
           str(HERE.parent / "tests" / "test_cuda.py")]  # fmt: skip
    limit = float(os.environ.get("HW2_SUITE_STEP_SECONDS", "180")) - 10
    log = out / "cuda_tests.log"
    with log.open("w") as fh:
        try:
            returncode = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=HERE.parent,
                                        timeout=max(limit, 10)).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            returncode = None
    text = log.read_text()
    progress = "".join(
        line.split(" ")[0] for line in text.splitlines() if re.fullmatch(r"[.FEsxX]+( +\[ *\d+%\])?", line)
    )
    counts = {"passed": progress.count("."), "failed": progress.count("F"), "errors": progress.count("E")}
    summary = [line for line in text.splitlines() if " passed" in line or " failed" in line or " error" in line]
    if returncode is None:
        return {"returncode": "timeout", "summary": f"stopped after {limit:.0f} s", **counts}
    return {"returncode": returncode, "summary": summary[-1] if summary else text[-300:], **counts}


# --------------------------------------------------------------------------- running and reporting


def run_step(name: str, dry: bool, out: Path) -> None:
    """In a child process: run one step and write its JSON."""
    start = time.perf_counter()
    try:
        result = globals()[f"step_{name}"](dry, out)
        status = "skipped" if "skipped" in result else "ok"
        if name == "cuda_tests" and result.get("returncode") not in (None, 0):
            status = "failed"
    except Exception as exc:  # recorded, never hidden: the suite goes on with the next step
        import traceback

        result, status = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, "failed"
    result.update(step=name, status=status, seconds=round(time.perf_counter() - start, 1))
    (out / "steps").mkdir(parents=True, exist_ok=True)
    (out / "steps" / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    columns = ["step", "status", "case", "path", "ms", "× eager", "× best PyTorch", "GB/s", "% copy BW", "TFLOP/s",
               "images/s", "note"]  # fmt: skip
    lines = [f"# GPU suite — {meta['device']}, {meta['date']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}; `{meta['command']}`", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]  # fmt: skip
    for r in results:
        rows = r.get("rows") or []
        if not rows:
            note = r.get("skipped") or r.get("error") or r.get("summary") or ""
            lines.append(f"| {r['step']} | {r['status']} ({r.get('seconds', '—')} s) | | | | | | | | | | {note} |")
        for row in rows:
            cells = [r["step"], r["status"], row.get("case", ""), row.get("path", "")]
            cells += [_fmt(row.get(key), spec) for key, spec in (("ms", ".3f"), ("speedup", ".2f"), ("vs_best", ".2f"),
                      ("gbps", ".0f"), ("pct_copy_bw", ".0f"), ("tflops", ".1f"), ("images_per_s", ".1f"))]  # fmt: skip
            cells.append(row.get("note", ""))
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def choices(results: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """``kernels/choices.json`` as this run measured it: every kernel step's choices (hw2kernels.RULE
    applied by :func:`hw2cli.tasks.bench.kernel_choices`); commit it there to make auto follow them."""
    picked: dict[str, str] = {}
    for result in results:
        if result.get("step", "").startswith("kernels_") and result.get("status") == "ok":
            picked.update(result.get("meta", {}).get("choices", {}))
    measured = f"{meta['device']}, {meta['date']}, torch {meta['torch']}, triton {meta['triton']}: {meta['command']}"
    return {"rule": "see hw2kernels.RULE", "measured": measured, "choices": dict(sorted(picked.items()))}


def bundle(out: Path, dest: Path) -> None:
    """Four files in ``dest``: the table, the JSON, auto's choices and one archive of everything under ``out``."""
    import shutil
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("suite.md", "suite.json", "choices.json"):
        shutil.copyfile(out / name, dest / name)
    with tarfile.open(dest / "suite-files.tar.gz", "w:gz") as tar:
        tar.add(out, arcname=out.name)
    print(f"gpu_suite: bundled into {dest}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on this CPU; CUDA steps skipped")
    parser.add_argument("--budget", type=float, default=360.0, help="seconds for the whole suite")
    parser.add_argument("--only", default=None, help="comma-separated steps (default: all)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="copy suite.md, suite.json and suite-files.tar.gz (all the files) here")  # fmt: skip
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)  # the child-process entry point
    args = parser.parse_args()
    out = args.out.resolve()
    if args.bundle is not None and args.bundle.resolve().is_relative_to(out):
        parser.error(f"--bundle {args.bundle} is inside OUTDIR {args.out}; expected a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    if args.step:
        run_step(args.step, args.dry_run, out)
        return 0

    import torch
    import triton

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device here; use --dry-run to check the suite on a CPU", file=sys.stderr)
        return 2
    meta = {"device": "cpu (dry run)" if dry else torch.cuda.get_device_name(0),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "triton": triton.__version__, "command": " ".join(["benchmarks/gpu_suite.sh", *sys.argv[1:]])}  # fmt: skip
    env = {**os.environ, "TRITON_INTERPRET": "0" if not dry else "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HW2_SUITE_STEP_SECONDS", None)
    wanted = [s for s, _ in STEPS if args.only is None or s in args.only.split(",")]
    deadline = time.perf_counter() + args.budget
    results = []
    for name, limit in STEPS:
        if name not in wanted:
            continue
        left = deadline - time.perf_counter()
        if left < 10:
            results.append({"step": name, "status": "skipped", "skipped": "out of time (budget spent)"})
            continue
        limit = min(limit if not dry else 60, left)
        print(f"gpu_suite: {name} (at most {limit:.0f} s)", file=sys.stderr, flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--step", name, *(["--dry-run"] if dry else [])]
        try:
            step_env = {**env, "HW2_SUITE_STEP_SECONDS": str(limit)}
            proc = subprocess.run(cmd, env=step_env, capture_output=True, text=True, timeout=limit, cwd=HERE.parent)
            (out / "steps").mkdir(exist_ok=True)
            (out / "steps" / f"{name}.log").write_text(proc.stdout + proc.stderr)
            step_file = out / "steps" / f"{name}.json"
            result = (
                json.loads(step_file.read_text())
                if step_file.is_file()
                else {"step": name, "status": "failed", "error": f"exit code {proc.returncode}: {proc.stderr[-500:]}"}
            )
        except subprocess.TimeoutExpired:
            result = {"step": name, "status": "failed", "error": f"timed out after {limit:.0f} s"}
        results.append(result)
        print(f"gpu_suite: {name}: {result['status']} ({result.get('seconds', '—')} s)", file=sys.stderr, flush=True)
    (out / "suite.json").write_text(json.dumps({"meta": meta, "steps": results}, indent=2, default=str) + "\n")
    (out / "suite.md").write_text(markdown(results, meta))
    (out / "choices.json").write_text(json.dumps(choices(results, meta), indent=2) + "\n")
    print(f"gpu_suite: wrote {out / 'suite.md'} and {out / 'suite.json'}", file=sys.stderr)
    if args.bundle is not None:
        bundle(out, args.bundle.resolve())
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
