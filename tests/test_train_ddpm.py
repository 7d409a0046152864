"""Training: bit-exact resume, Ctrl-C checkpoints, clear errors, data-parallel ranks in step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

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


def final_state(run) -> dict:
    """The newest saved state of a run folder: hw2's JSON (step, options, each process's batch
    generator and RNG states), raw weights, EMA, optimizer and accelerate's RNG file."""
    from safetensors.torch import load_file

    folder = sorted(run.glob("state-*"))[-1]  # a SIGKILL between a save's rename and the old one's removal leaves two
    state = {
        "hw2": json.loads((folder / "hw2_state.json").read_text()),
        "model": load_file(folder / "model.safetensors"),
        "ema": load_file(folder / "ema.safetensors"),
        "optimizer": torch.load(folder / "optimizer.bin", weights_only=True),
    }
    state["hw2"].pop("options")
    return state


def saved_step(run) -> int:
    return final_state(run)["hw2"]["step"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_step_finishes_the_step_and_resumes_bit_exactly(digits, tmp_path, monkeypatch, sig, bit_equal):
    train_ddpm(opts(digits, tmp_path / "a", checkpoint_every=100), device=CPU)
    from hw2cli.models.digit_unet import DigitUNet

    forward, calls = DigitUNet.forward, []

    def signalled_forward(self, *args, **kwargs):  # the signal lands inside step 4, after its noise is drawn
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), sig)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(DigitUNet, "forward", signalled_forward)
    with pytest.raises(TrainingInterrupted, match=f"{sig.name} after step 4; saved in") as info:
        train_ddpm(opts(digits, tmp_path / "b", checkpoint_every=100), device=CPU)
    monkeypatch.setattr(DigitUNet, "forward", forward)
    assert info.value.exit_code == 130
    assert saved_step(tmp_path / "b") == 4
    train_ddpm(opts(digits, tmp_path / "b", checkpoint_every=100), device=CPU, resume=True)
    # model, EMA, optimizer, step and every RNG state equal the uninterrupted run's, bit for bit
    assert bit_equal(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    a_log = (tmp_path / "a" / "log.jsonl").read_text()
    assert (tmp_path / "b" / "log.jsonl").read_text() == a_log


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(digits, tmp_path):
    def ctrl_c(step, metrics):
        if step == 4:
            raise KeyboardInterrupt  # what the handler raises on the second Ctrl-C

    with pytest.raises(TrainingInterrupted, match="without saving"):
        train_ddpm(opts(digits, tmp_path / "b"), device=CPU, on_step=ctrl_c)
    assert saved_step(tmp_path / "b") == 3


def test_a_crafted_state_file_is_refused_without_running(digits, tmp_path, run_cli):
    marker = tmp_path / "pwned"
    train_ddpm(opts(digits, tmp_path / "run", steps=3), device=CPU)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder,) = (tmp_path / "run").glob("state-*")
    torch.save({"state": {}, "param_groups": [], "payload": Payload()}, folder / "optimizer.bin")
    r = run_cli("ddpm", "train", "--data", digits, "--out", tmp_path / "run", "--resume")
    assert r.code == 2
    assert not marker.exists()
    assert "refused" in r.err and "weights_only" not in r.err and "Traceback" not in r.err
    (folder / "optimizer.bin").write_bytes(b"PK\x03\x04 truncated")
    r = run_cli("ddpm", "train", "--data", digits, "--out", tmp_path / "run", "--resume")
    assert r.code == 2 and "truncated or corrupt" in r.err
    (folder / "optimizer.bin").unlink()
    (folder / "ema.safetensors").write_bytes(b"not safetensors")
    r = run_cli("ddpm", "train", "--data", digits, "--out", tmp_path / "run", "--resume")
    assert r.code == 2 and "ema.safetensors cannot be read" in r.err and "Traceback" not in r.err
    from safetensors.torch import save_file

    save_file({"other": torch.zeros(2)}, folder / "ema.safetensors")  # readable, but another network's
    r = run_cli("ddpm", "train", "--data", digits, "--out", tmp_path / "run", "--resume")
    assert r.code == 2 and "ema.safetensors has" in r.err and "this state is damaged" in r.err
    mark = json.loads((folder / "hw2_state.json").read_text())
    del mark["files"]  # as an hw2 that recorded no digests wrote it: the network itself says no
    (folder / "hw2_state.json").write_text(json.dumps(mark))
    r = run_cli("ddpm", "train", "--data", digits, "--out", tmp_path / "run", "--resume")
    assert r.code == 2 and "does not fit" in r.err and "Traceback" not in r.err


def test_a_damaged_newest_state_resumes_bit_exactly_from_the_one_before(digits, tmp_path, bit_equal, run_cli):
    from test_training_state import flip_a_byte

    train_ddpm(opts(digits, tmp_path / "a", checkpoint_every=2), device=CPU)
    run = tmp_path / "b"

    def sigterm_at_5(step, metrics):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="after step 5"):
        train_ddpm(opts(digits, run, checkpoint_every=2), device=CPU, on_step=sigterm_at_5)
    assert sorted(p.name for p in run.glob("state-*")) == ["state-0000004", "state-0000005"]
    flip_a_byte(run / "state-0000005" / "model.safetensors")  # same size, still readable: only its digest tells
    r = run_cli("ddpm", "train", "--data", digits, "--out", run, "--resume")
    assert r.code == 0, r.err
    assert "model.safetensors differs from what was saved" in r.err and "state-0000004 (step 4)" in r.err
    assert bit_equal(final_state(tmp_path / "a"), final_state(run))
    assert (run / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()
    assert sorted(p.name for p in run.glob("state-*")) == ["state-0000004", "state-0000006"]
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged == [json.loads(line)["step"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_resume_after_a_kill_repairs_the_run_folder(digits, tmp_path, bit_equal):
    train_ddpm(opts(digits, tmp_path / "a"), device=CPU)
    run = tmp_path / "b"
    train_ddpm(opts(digits, run, steps=3), device=CPU)
    # what a SIGKILL in the middle of the next save leaves: a stale temporary, weights of a later
    # step than the resume state, and log lines of steps that will be redone
    stale = run / f".model.safetensors.hw2-{dead_pid()}-x1y2z3.tmp"
    stale.write_bytes(b"")
    from hw2cli.io.checkpoints import load_checkpoint, save_checkpoint

    net, config = load_checkpoint(tmp_path / "a")
    save_checkpoint(net, config, run)  # step 6 weights beside a step-3 state
    with open(run / "log.jsonl", "a") as fh:
        fh.write('{"step": 5, "loss": 1.0, "lr": 0.1}\n{"step": 6, "lo')
    resumed = train_ddpm(opts(digits, run, steps=3), device=CPU, resume=True, steps=6)
    assert resumed.step == 6
    assert not stale.exists()
    assert bit_equal(final_state(tmp_path / "a"), final_state(run))
    assert (run / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged == [3, 6]  # the end of the first run, then the resumed run; step 5 and the cut line are gone


def test_sigkill_of_a_real_run_resumes_from_a_consistent_pair(digits, tmp_path):
    run = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW2_")} | {"OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "hw2cli",
        "--quiet",
        "ddpm",
        "train",
        "--data",
        str(digits),
        "--out",
        str(run),
        "--steps",
        "400",
        "--batch",
        "8",
        "--width",
        "8",
        "--checkpoint-every",
        "2",
        "--sample-every",
        "0",
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(run.glob("state-*/hw2_state.json")):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run(
        [*args[:-4], "--steps", str(saved_step(run) + 2), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no entries of discarded steps survive


def test_run_folder_errors(digits, tmp_path):
    from hw2cli.errors import as_option

    def cli_message(**kw) -> str:
        with pytest.raises(UsageError) as info:
            train_ddpm(**kw)
        return info.value.render(as_option)  # what the CLI prints; the API names parameters instead

    message = cli_message(opts=opts(digits, tmp_path / "new"), device=CPU, resume=True)
    assert "holds no saved training state to resume from" in message
    train_ddpm(opts(digits, tmp_path / "done", steps=1), device=CPU)
    assert "already holds a training run; pass --resume" in cli_message(
        opts=opts(digits, tmp_path / "done", steps=1), device=CPU
    )
    assert "--batch 1000 is larger than" in cli_message(opts=opts(digits, tmp_path / "big", batch=1000), device=CPU)
    assert "--drop-prob must be in" in cli_message(opts=opts(digits, tmp_path / "p", drop_prob=1.5), device=CPU)
    assert "no svhn data under" in cli_message(opts=opts(digits / "mnistm", tmp_path / "q"), device=CPU)


WORKER = textwrap.dedent(
    """
    import os, sys, torch
    from hw2cli.tasks.train_ddpm import TrainOptions, train_ddpm
    data, out, dump = sys.argv[1:4]
    steps, resume = (int(sys.argv[4]), True) if len(sys.argv) > 4 else (4, False)
    model = {"base_channels": 8, "head_dim": 8, "groups": 4, "channel_mult": [1, 2], "attention_levels": [1],
             "dropout": 0.0}
    o = TrainOptions(data=data, out=out, steps=4, batch=8, warmup=2, checkpoint_every=2, sample_every=0, model=model)
    r = train_ddpm(o, device=torch.device("cpu"), resume=resume, steps=steps if resume else None)
    # the group is gone before exit: Gloo threads alive at finalisation can abort the process (SIGABRT)
    assert not torch.distributed.is_initialized()
    torch.save(r.model.state_dict(), f"{dump}/rank{os.environ.get('RANK', 'single')}.pt")
    """
)


def test_two_gloo_processes_stay_identical_and_match_one_process(digits, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW2_")} | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
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
    # the two processes resume their run (each reads the EMA state onto its device, accelerate's "cpu:0")
    proc = subprocess.run(
        [*cmd, str(script), str(digits), str(tmp_path / "ddp"), str(tmp_path), "6"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert states_equal(torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt"))
    assert saved_step(tmp_path / "ddp") == 6


def test_the_largest_seed_the_cli_accepts_trains(digits, tmp_path, run_cli):
    """--seed is bounded by what numpy's seeding takes (2**32 − 1), and that seed runs to the end."""
    common = ["ddpm", "train", "--data", digits, "--steps", "1", "--batch", "4", "--width", "8", "--sample-every", "0"]
    r = run_cli(*common, "--out", tmp_path / "a", "--seed", str(2**32 - 1))
    assert r.code == 0, r.err
    r = run_cli(*common, "--out", tmp_path / "b", "--seed", str(2**32))
    assert r.code == 2 and "4294967296" in r.err and "Traceback" not in r.err


def test_a_resume_says_what_it_does_not_apply_and_when_nothing_is_left(digits, tmp_path, run_cli):
    common = ["ddpm", "train", "--data", digits, "--out", tmp_path / "r"]
    assert run_cli(*common, "--steps", "2", "--batch", "4", "--width", "8", "--sample-every", "0").code == 0
    r = run_cli(*common, "--resume", "--width", "16", "--lr", "5e-4")
    assert r.code == 0, r.err
    assert "so --lr (the run's: 0.001), --width (the run's: 8) given here are not applied" in r.err
    assert "had already finished at step 2; nothing to train" in r.out and "nan" not in r.out
    r = run_cli(*common, "--resume", "--steps", "3", "--batch", "4", "--width", "8", "--sample-every", "0")
    assert r.code == 0 and "not applied" not in r.err and "done: step 3" in r.out  # the same command warns of nothing
    assert "--steps 3: the run was planned for 2 steps; the learning rate's cosine decay is planned again" in r.err
    r = run_cli(*common, "--resume", "--steps", "3")
    assert r.code == 0 and "planned again" not in r.err  # the length it has now
    r = run_cli(*common, "--resume", "--steps", "2")
    assert r.code == 0 and "planned again" not in r.err and "nothing to train" in r.out  # shorter: nothing re-planned


def test_a_resume_of_a_stopped_run_with_fewer_steps_is_not_called_finished(digits, tmp_path, run_cli):
    def ctrl_c(step, metrics):
        if step == 4:
            raise KeyboardInterrupt  # a second Ctrl-C: stopped for good at the state of step 3

    with pytest.raises(TrainingInterrupted):
        train_ddpm(opts(digits, tmp_path / "r", steps=6), device=CPU, on_step=ctrl_c)
    assert saved_step(tmp_path / "r") == 3
    r = run_cli("ddpm", "train", "--data", digits, "--out", tmp_path / "r", "--resume", "--steps", "2")
    assert r.code == 0, r.err
    said = " ".join(r.out.split())
    stopped = f"{tmp_path / 'r'} was stopped at step 3 of its planned 6, and --steps 2 asks for no more"
    assert f"{stopped}; nothing to train" in said
    assert "finished" not in said and "3/2" not in r.err  # the bar never counts past its end


def test_a_sample_grid_a_kill_prevented_is_drawn_on_resume(digits, tmp_path):
    # a kill after step 2's state was saved and before its grid: the resume draws the same grid
    train_ddpm(opts(digits, tmp_path / "r", steps=2, checkpoint_every=2, sample_every=2), device=CPU)
    grid = tmp_path / "r" / "samples" / "step_0000002.png"
    drawn = grid.read_bytes()
    grid.unlink()
    train_ddpm(opts(digits, tmp_path / "r"), device=CPU, resume=True, steps=4)
    assert grid.read_bytes() == drawn
    assert (tmp_path / "r" / "samples" / "step_0000004.png").is_file()


def test_a_resume_on_other_training_images_is_refused(digits, tmp_path):
    """The data may move (the same images elsewhere continue); other images would make another model."""
    import shutil

    train_ddpm(opts(digits, tmp_path / "run", steps=3), device=CPU)
    moved = tmp_path / "moved" / "digits"
    shutil.copytree(digits, moved)
    resumed = train_ddpm(opts(moved, tmp_path / "run", steps=3), device=CPU, resume=True, steps=4)
    assert resumed.step == 4
    other = tmp_path / "other"
    synthesize(other, per_class=2, seed=9)
    with pytest.raises(UsageError, match=r"holds other training images than the run .* began with \(\d+ images now"):
        train_ddpm(opts(other / "digits", tmp_path / "run", steps=3), device=CPU, resume=True, steps=5)
