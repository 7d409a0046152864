"""P2 speed: 10 faces × 50 DDIM steps at 256² with the official-size face UNet.

    python benchmarks/ddim_faces.py [--unet UNet.pt] [--steps 50] [--batch 10] [--repeats 1] [--interleave]

Times every path this machine can run, in one run, side by side: eager fp32 always, NCHW and
channels_last (what ``hw2 ddim sample`` runs on a CPU and on CUDA); on CUDA also eager bf16, the
fused Triton kernels (fp32, bf16) and torch.compile (bf16). Weights are random unless --unet is
given (the time does not depend on them). ``--interleave`` runs the repeats of all paths in
turn, so a machine's drift falls on each alike. Writes
benchmarks/results/ddim_faces.json; GPU rows are absent, not guessed, on a CPU-only machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics

from _common import median_time, write_result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unet", default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--interleave", action="store_true")
    args = parser.parse_args()

    import hw2kernels
    import torch

    from hw2cli.diffusion import NoiseSchedule
    from hw2cli.io.checkpoints import load_face_unet
    from hw2cli.models import FaceUNet
    from hw2cli.tasks.ddim import DDIMOptions, EpsSource, run_ddim

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_face_unet(args.unet, device) if args.unet else FaceUNet().to(device).eval()
    noise = torch.randn(args.batch, 3, args.side, args.side, generator=torch.Generator().manual_seed(0))
    opts = DDIMOptions(steps=args.steps)

    paths = [("eager", torch.float32, "torch", False), ("eager-nhwc", torch.float32, "torch", False)]
    if device.type == "cuda":
        paths += [("eager", torch.bfloat16, "torch", False)]
        if hw2kernels.triton_status()[0]:
            paths += [("triton", torch.float32, "triton", False), ("triton", torch.bfloat16, "triton", False)]
        paths += [("torch.compile", torch.bfloat16, "torch", True)]
    nhwc_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    runs = []
    for name, dtype, backend, compiled in paths:
        nhwc = name.endswith("-nhwc")
        chosen = nhwc_model if nhwc else model
        net = torch.compile(chosen) if compiled else chosen

        def eps(x, t, cond=None, net=net, dtype=dtype, nhwc=nhwc):
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                return net(x, t).float().contiguous()

        source = EpsSource(eps, NoiseSchedule.linear(), None, "face", device)

        def run(source=source, backend=backend):
            hw2kernels.set_default_backend(backend)
            run_ddim(source, noise, opts, batch=args.batch)
            if device.type == "cuda":
                torch.cuda.synchronize()

        runs.append((name, dtype, run))
    warmup = 1 if device.type == "cuda" else 0
    if args.interleave:  # every path once per round, so the machine's drift falls on each alike
        for _, _, run in runs:  # one untimed run each, first calls' set-up (oneDNN's, CUDA's) included
            run()
        times_of = {name: [] for name, _, _ in runs}
        for _ in range(args.repeats):
            for name, _, run in runs:
                times_of[name] += median_time(run, repeats=1, warmup=0)[1]
        timed = [(name, dtype, statistics.median(times_of[name]), times_of[name]) for name, dtype, _ in runs]
    else:
        timed = [(name, dtype, *median_time(run, repeats=args.repeats, warmup=warmup)) for name, dtype, run in runs]
    rows = []
    for name, dtype, med, times in timed:
        rows.append({"path": name, "dtype": str(dtype).removeprefix("torch."), "seconds": med, "all": times})
        print(f"{name:14s} {rows[-1]['dtype']:9s} {med:9.2f} s for {args.batch} images × {args.steps} steps")
    hw2kernels.set_default_backend("auto")
    for r in rows:
        r["speedup_vs_eager_fp32"] = rows[0]["seconds"] / r["seconds"]
    info = {"batch": args.batch, "steps": args.steps, "side": args.side, "device": str(device), "rows": rows}
    print("wrote", write_result("ddim_faces", info))


if __name__ == "__main__":
    main()
