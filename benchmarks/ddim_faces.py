"""P2 speed: 10 faces × 50 DDIM steps at 256² with the official-size face UNet.

    python benchmarks/ddim_faces.py [--unet UNet.pt] [--steps 50] [--batch 10] [--repeats 1]

Times every path this machine can run, in one run, side by side: eager fp32 always; on CUDA
also eager bf16, the fused Triton kernels (fp32, bf16) and torch.compile (bf16). Weights are
random unless --unet is given (the time does not depend on them). Writes
benchmarks/results/ddim_faces.json; GPU rows are absent, not guessed, on a CPU-only machine.
"""

from __future__ import annotations

import argparse

from _common import median_time, write_result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unet", default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
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

    paths = [("eager", torch.float32, "torch", False)]
    if device.type == "cuda":
        paths += [("eager", torch.bfloat16, "torch", False)]
        if hw2kernels.triton_status()[0]:
            paths += [("triton", torch.float32, "triton", False), ("triton", torch.bfloat16, "triton", False)]
        paths += [("torch.compile", torch.bfloat16, "torch", True)]
    rows = []
    for name, dtype, backend, compiled in paths:
        hw2kernels.set_default_backend(backend)
        net = torch.compile(model) if compiled else model

        def eps(x, t, cond=None, net=net, dtype=dtype):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                return net(x, t).float()

        source = EpsSource(eps, NoiseSchedule.linear(), None, "face", device)

        def run(source=source):
            run_ddim(source, noise, opts, batch=args.batch)
            if device.type == "cuda":
                torch.cuda.synchronize()

        med, times = median_time(run, repeats=args.repeats, warmup=1 if device.type == "cuda" else 0)
        rows.append({"path": name, "dtype": str(dtype).removeprefix("torch."), "seconds": med, "all": times})
        print(f"{name:14s} {rows[-1]['dtype']:9s} {med:9.2f} s for {args.batch} images × {args.steps} steps")
    hw2kernels.set_default_backend("auto")
    for r in rows:
        r["speedup_vs_eager_fp32"] = rows[0]["seconds"] / r["seconds"]
    info = {"batch": args.batch, "steps": args.steps, "side": args.side, "device": str(device), "rows": rows}
    print("wrote", write_result("ddim_faces", info))


if __name__ == "__main__":
    main()
