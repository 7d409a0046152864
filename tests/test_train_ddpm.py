"""Training: bit-exact resume, Ctrl-C checkpoints, clear errors, data-parallel ranks in step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hw2cli.data.synth import synthesize
from hw2cli.errors import UsageError
from hw2cli.tasks.train_ddpm import TrainingInterrupted, TrainOptions, train_ddpm

TINY = {"base_channels": 8, "head_dim": 8, "groups": 4, "channel_mult": [1, 2], "attention_levels": [1]}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthesize(root, per_class=3, seed=3)
    return root / "digits"


def opts(data, out, **kw) -> TrainOptions:
    base = dict(
        data=str(data), out=str(out), steps=6, batch=8, warmup=2, checkpoint_every=3, sample_every=0, model=TINY
    )
    return TrainOptions(**{**base, **kw})


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_is_bit_exact(digits, tmp_path):
    straight = train_ddpm(opts(digits, tmp_path / "a"), device=CPU)
    train_ddpm(opts(digits, tmp_path / "b", steps=3), device=CPU)
    resumed = train_ddpm(opts(digits, tmp_path / "b"), device=CPU, resume=True, steps=6)
    assert resumed.step == 6
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.ema.state_dict(), resumed.ema.state_dict())
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()


def test_interrupt_saves_and_resumes_exactly(digits, tmp_path):
    straight = train_ddpm(opts(digits, tmp_path / "a"), device=CPU)

    def ctrl_c(step, metrics):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="interrupted at step 4") as info:
        train_ddpm(opts(digits, tmp_path / "b"), device=CPU, on_step=ctrl_c)
    assert info.value.exit_code == 130
    saved = torch.load(tmp_path / "b" / "train_state.pt", weights_only=False)
    assert saved["step"] == 4
    resumed = train_ddpm(opts(digits, tmp_path / "b"), device=CPU, resume=True)
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())


def test_run_folder_errors(digits, tmp_path):
    with pytest.raises(UsageError, match="holds no train_state.pt to resume from"):
        train_ddpm(opts(digits, tmp_path / "new"), device=CPU, resume=True)
    train_ddpm(opts(digits, tmp_path / "done", steps=1), device=CPU)
    with pytest.raises(UsageError, match="already holds a training run; pass --resume"):
        train_ddpm(opts(digits, tmp_path / "done", steps=1), device=CPU)
    with pytest.raises(UsageError, match="--batch 1000 is larger than"):
        train_ddpm(opts(digits, tmp_path / "big", batch=1000), device=CPU)
    with pytest.raises(UsageError, match="--drop-prob must be in"):
        train_ddpm(opts(digits, tmp_path / "p", drop_prob=1.5), device=CPU)
    with pytest.raises(UsageError, match="no svhn data under"):
        train_ddpm(opts(digits / "mnistm", tmp_path / "q"), device=CPU)


WORKER = textwrap.dedent(
    """
    import os, sys, torch
    from hw2cli.tasks.train_ddpm import TrainOptions, train_ddpm
    data, out, dump = sys.argv[1:4]
    model = {"base_channels": 8, "head_dim": 8, "groups": 4, "channel_mult": [1, 2], "attention_levels": [1],
             "dropout": 0.0}
    o = TrainOptions(data=data, out=out, steps=4, batch=8, warmup=2, checkpoint_every=2, sample_every=0, model=model)
    r = train_ddpm(o, device=torch.device("cpu"))
    torch.save(r.model.state_dict(), f"{dump}/rank{os.environ.get('RANK', 'single')}.pt")
    """
)


def test_two_gloo_processes_stay_identical_and_match_one_process(digits, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW2_")} | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"]
    proc = subprocess.run(
        [*cmd, str(script), str(digits), str(tmp_path / "ddp"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert states_equal(rank0, rank1)
    # the same global batch in one process gives the same weights up to all-reduce rounding
    subprocess.run(
        [sys.executable, str(script), str(digits), str(tmp_path / "one"), str(tmp_path)], env=env, check=True
    )
    single = torch.load(tmp_path / "ranksingle.pt")
    for k in single:
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "ddp" / "model.safetensors").exists()
