"""Guidance distillation (`hw2 ddpm distill`): the student's start, its target, one evaluation per
step when sampling, its recorded sampler steps, resume, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from hw2cli.data.synth import synthesize
from hw2cli.diffusion.wrappers import build_network, classifier_free_guidance, guided_eps
from hw2cli.io.checkpoints import DiffusionConfig, load_model, save_checkpoint
from hw2cli.models.digit_unet import DigitUNet, DigitUNetConfig
from hw2cli.tasks.train_ddpm import TrainOptions, guided_target, train_ddpm

TINY = {"base_channels": 8, "head_dim": 8, "groups": 4, "channel_mult": [1, 2], "attention_levels": [1],
        "dropout": 0.0}  # fmt: skip
CPU = torch.device("cpu")


def random_net(config: dict, seed: int = 0) -> DigitUNet:
    """A DigitUNet whose output depends on every input (zero-initialised layers filled in)."""
    torch.manual_seed(seed)
    net = DigitUNet(DigitUNetConfig.from_dict(config))
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.05)
    return net.eval()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthesize(root, per_class=3, seed=3)
    return root / "digits"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    config = DiffusionConfig(model=dict(TINY))
    return save_checkpoint(random_net(TINY), config, tmp_path_factory.mktemp("teacher"))


def inputs(b: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, 28, 28, generator=g), torch.randint(1, 1000, (b,), generator=g),
            torch.randint(0, 20, (b,), generator=g))  # fmt: skip


def test_the_target_is_classifier_free_guidance_with_a_weight_per_image():
    teacher = random_net(TINY)
    x, t, c = inputs()
    w = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.5, 4.0])
    got = guided_target(teacher, x, t, c, 20, w)
    for i in range(len(w)):  # the wrapper the sampler uses, one weight at a time
        want = classifier_free_guidance(teacher, float(w[i]), torch.tensor([20]))(x[i : i + 1], t[i : i + 1],
                                                                                  c[i : i + 1])  # fmt: skip
        torch.testing.assert_close(got[i : i + 1], want, rtol=1e-4, atol=1e-5)
    # and the explicit formula in float64
    with torch.no_grad():
        teacher64 = random_net(TINY).double()
        e_c, e_u = teacher64(x.double(), t, c), teacher64(x.double(), t, torch.full_like(c, 20))
    want64 = (1 + w.double())[:, None, None, None] * e_c - w.double()[:, None, None, None] * e_u
    torch.testing.assert_close(got.double(), want64, rtol=1e-4, atol=1e-5)


def test_a_fresh_student_is_its_teachers_conditional_eps_and_then_depends_on_w():
    teacher = random_net(TINY)
    student = DigitUNet(DigitUNetConfig.from_dict({**TINY, "guidance_embedding": True})).eval()
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("guidance_mlp.") for k in missing)
    x, t, c = inputs()
    with torch.no_grad():
        for w in (0.0, 2.0):
            torch.testing.assert_close(student(x, t, c, torch.full((6,), w)), teacher(x, t, c))
        torch.nn.init.normal_(student.guidance_mlp[2].weight, std=0.5)
        assert not torch.allclose(student(x, t, c, torch.zeros(6)), student(x, t, c, torch.full((6,), 2.0)))
    with pytest.raises(ValueError, match="needs the guidance weight"):
        student(x, t, c)


def test_sampling_a_student_costs_one_evaluation_of_the_plain_batch():
    student = random_net({**TINY, "guidance_embedding": True})
    teacher = random_net(TINY)
    calls = []

    def hook(module, args, kwargs):
        calls.append((args[0].shape[0], args[3] if len(args) > 3 else kwargs.get("guidance")))

    x, t, c = inputs(4)
    null = torch.tensor([20])
    for net in (student, teacher):
        net.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        out = guided_eps(student, 2.5, null, CPU, torch.float32)(x, t, c)
        assert [(b, w.tolist()) for b, w in calls] == [(4, [2.5] * 4)]
        torch.testing.assert_close(out, student(x, t, c, torch.full((4,), 2.5)))
        calls.clear()
        guided_eps(teacher, 2.5, null, CPU, torch.float32)(x, t, c)
        assert [b for b, _ in calls] == [8]  # the teacher: a doubled batch (cond + null)


def distill_opts(digits, teacher, out, **kw) -> TrainOptions:
    base = dict(data=str(digits), out=str(out), steps=4, batch=8, warmup=2, lr=1e-3, drop_prob=0.0,
                checkpoint_every=2, sample_every=0, teacher=str(teacher), sampler_steps=3)  # fmt: skip
    return TrainOptions(**{**base, **kw})


def test_distillation_moves_the_student_toward_the_guided_teacher_and_resumes_bit_exactly(digits, teacher, tmp_path):
    straight = train_ddpm(distill_opts(digits, teacher, tmp_path / "a", steps=30, lr=3e-3), device=CPU)
    student = straight.model.eval()
    t_net = load_model(teacher, CPU).net
    x, t, c = inputs(16, seed=5)
    w = torch.full((16,), 3.0)
    with torch.no_grad():
        target = guided_target(t_net, x, t, c, 20, w)
        before = (t_net(x, t, c) - target).pow(2).mean()  # the fresh student's error
        after = (student(x, t, c, w) - target).pow(2).mean()
    assert after < 0.8 * before
    # stopped after 2 of 4 steps and resumed: the same weights as 4 straight steps
    four = train_ddpm(distill_opts(digits, teacher, tmp_path / "b"), device=CPU)
    train_ddpm(distill_opts(digits, teacher, tmp_path / "c", steps=2), device=CPU)
    resumed = train_ddpm(distill_opts(digits, teacher, tmp_path / "c"), device=CPU, resume=True, steps=4)
    for k, v in four.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (tmp_path / "c" / "model.safetensors").read_bytes()


def test_the_cli_distills_and_generate_uses_the_students_recorded_steps(run_cli, digits, teacher, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    out = tmp_path / "student"
    r = run_cli("--quiet", "ddpm", "distill", "--data", digits, "--teacher", teacher, "--out", out, "--steps", "2",
                "--batch", "8", "--sampler-steps", "3", "--sample-every", "0")  # fmt: skip
    assert r.code == 0, r.err
    model = load_model(out, CPU)
    assert model.net.guidance_distilled and model.config.extra["sampler_steps"] == {"dpm": 3, "unipc": 3}
    calls = []
    forward = DigitUNet.forward

    def counted(self, x, t, cond, guidance=None):
        calls.append(x.shape[0])
        return forward(self, x, t, cond, guidance)

    monkeypatch.setattr(DigitUNet, "forward", counted)
    r = run_cli("ddpm", "sample", "-d", "4", "-n", "2", "--dataset", "mnistm", "--checkpoint", out,
                "--out", tmp_path / "s")  # fmt: skip
    assert r.code == 0, r.err
    assert calls == [2, 2, 2]  # three DPM-Solver++ steps, one evaluation of the 2 images each
    calls.clear()
    r = run_cli("ddpm", "sample", "-d", "4", "-n", "2", "--dataset", "mnistm", "--checkpoint", out,
                "--out", tmp_path / "u", "--sampler", "unipc")  # fmt: skip
    assert r.code == 0, r.err
    assert calls == [2, 2, 2]  # UniPC: the same recorded steps
    calls.clear()
    r = run_cli("ddpm", "sample", "-d", "4", "-n", "2", "--dataset", "mnistm", "--checkpoint", teacher,
                "--out", tmp_path / "t", "--steps", "3")  # fmt: skip
    assert r.code == 0 and calls == [4, 4, 4]  # the teacher: cond + null per step
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["guidance_embedding"] is True


def test_distill_errors_are_one_sentence(run_cli, digits, teacher, tmp_path):
    student = tmp_path / "student"
    assert run_cli("-q", "ddpm", "distill", "--data", digits, "--teacher", teacher, "--out", student, "--steps", "1",
                   "--batch", "8", "--sample-every", "0").code == 0  # fmt: skip
    r = run_cli("ddpm", "distill", "--data", digits, "--teacher", student, "--out", tmp_path / "x", "--steps", "1")
    assert r.code == 2 and "already distilled student" in r.err and "Traceback" not in r.err
    r = run_cli("ddpm", "distill", "--data", digits, "--teacher", teacher, "--out", tmp_path / "y",
                "--guidance-min", "3", "--guidance-max", "1")  # fmt: skip
    assert r.code == 2 and "--guidance-min 3 is above --guidance-max 1" in r.err
    r = run_cli(
        "ddpm", "distill", "--data", digits, "--teacher", tmp_path / "nope.safetensors", "--out", tmp_path / "z"
    )
    assert r.code == 2 and "nope.safetensors" in r.err and "Traceback" not in r.err
    r = run_cli("ddpm", "distill", "--data", digits, "--teacher", teacher, "--out", tmp_path / "w",
                "--guidance-max", "11")  # fmt: skip
    assert r.code == 2 and "--guidance-max" in r.err


def test_an_old_checkpoint_config_still_builds_a_plain_network():
    net = build_network(DiffusionConfig(model=dict(TINY)))
    assert not net.guidance_distilled and net.guidance_mlp is None


def test_a_weight_outside_the_students_range_is_warned_about_and_the_teacher_is_not(run_cli, digits, teacher,
                                                                                    tmp_path):  # fmt: skip
    out = tmp_path / "student"
    r = run_cli("--quiet", "ddpm", "distill", "--data", digits, "--teacher", teacher, "--out", out, "--steps", "1",
                "--batch", "8", "--guidance-max", "3", "--sample-every", "0")  # fmt: skip
    assert r.code == 0, r.err
    args = ["ddpm", "sample", "-d", "4", "-n", "1", "--dataset", "mnistm", "--steps", "1"]
    inside = run_cli(*args, "--checkpoint", out, "--guidance", "3", "--out", tmp_path / "a")
    outside = run_cli(*args, "--checkpoint", out, "--guidance", "3.5", "--out", tmp_path / "b")
    by_teacher = run_cli(*args, "--checkpoint", teacher, "--guidance", "3.5", "--out", tmp_path / "c")
    assert inside.code == outside.code == by_teacher.code == 0, (inside.err, outside.err, by_teacher.err)
    assert "extrapolates" not in inside.err and "extrapolates" not in by_teacher.err
    assert "learned guidance weights 0 to 3; at w = 3.5 it extrapolates" in " ".join(outside.err.split())


def test_a_teacher_of_one_data_set_distills_a_student_of_that_data_set(run_cli, digits, tmp_path):
    """distill has no --datasets: the student learns exactly the teacher's conditions (it refused
    an MNIST-M-only teacher, 'trained on mnistm, not mnistm, svhn', with no way out)."""
    config = DiffusionConfig(model=dict(TINY), datasets=["mnistm"])
    teacher = save_checkpoint(random_net(TINY), config, tmp_path / "teacher")
    r = run_cli("-q", "ddpm", "distill", "--data", digits, "--teacher", teacher, "--out", tmp_path / "s",
                "--steps", "1", "--batch", "8", "--sample-every", "0")  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "s" / "config.json").read_text())["datasets"] == ["mnistm"]


def test_a_teacher_given_with_resume_is_said_not_to_apply(run_cli, digits, teacher, tmp_path):
    args = ["ddpm", "distill", "--data", digits, "--out", tmp_path / "s"]
    assert run_cli(*args, "--teacher", teacher, "--steps", "1", "--batch", "8", "--sample-every", "0").code == 0
    r = run_cli(*args, "--resume", "--steps", "2", "--teacher", tmp_path / "another.safetensors")
    assert r.code == 0, r.err
    assert f"so --teacher (the run's: {teacher}) given here is not applied" in r.err
    r = run_cli(*args, "--resume", "--steps", "3", "--teacher", teacher, "--batch", "8")
    assert r.code == 0 and "not applied" not in r.err  # what the run was started with is no warning
