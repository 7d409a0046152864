"""Samplers against independent references on random inputs."""

from __future__ import annotations

import math

import pytest
import torch

from hw2cli.diffusion import (
    NoiseSchedule,
    classifier_free_guidance,
    ddpm_step,
    make_timesteps,
    sample_ddim,
    sample_ddpm,
    sample_dpm,
    sample_unipc,
)


def toy_eps(x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
    """A smooth, t-dependent stand-in for a network (deterministic)."""
    w = (t.to(x.dtype) / 1000.0 + 0.5).reshape(-1, 1, 1, 1)
    return torch.tanh(x * w) + 0.1 * torch.sin(3 * x)


def test_schedules_match_formulas():
    s = NoiseSchedule.linear()
    betas = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
    assert s.betas.dtype == torch.float64 and torch.equal(s.betas, betas)
    torch.testing.assert_close(s.alpha_bar, torch.cumprod(1 - betas, 0), rtol=0, atol=0)
    tp = NoiseSchedule.teapearce(400)
    assert tp.num_steps == 401
    assert math.isclose(tp.betas[0].item(), 1e-4) and math.isclose(tp.betas[400].item(), 0.02)
    cos = NoiseSchedule.cosine(1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert math.isclose(cos.alpha_bar[499].item(), f(500) / f(0), rel_tol=1e-9)
    assert NoiseSchedule.from_config(s.config()).betas.equal(s.betas)


@pytest.mark.parametrize("t", [1, 17, 500, 999])
def test_one_ddpm_step_is_the_closed_form_posterior(t):
    """x_{t-1} = 1/√α_t (x_t − β_t/√(1−ᾱ_t) ε) + σ_t z (Ho et al. eq. 11), σ² = β̃_t or β_t, in float64."""
    s = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(t)
    x, eps, z = (torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    beta, ab, ab_prev = s.betas[t].item(), s.alpha_bar[t].item(), s.alpha_bar[t - 1].item()
    mean = (x - beta / math.sqrt(1 - ab) * eps) / math.sqrt(1 - beta)
    for variance, var in (("posterior", beta * (1 - ab_prev) / (1 - ab)), ("beta", beta)):
        out, _ = ddpm_step(eps, x, ab, ab_prev, z, variance=variance)
        torch.testing.assert_close(out, mean + math.sqrt(var) * z, rtol=1e-12, atol=1e-12)


def test_ddpm_on_teapearce_schedule_reproduces_its_sampler():
    """The original loop: x = oneover_sqrta[i]·(x − ε·mab_over_sqrtmab[i]) + sqrt_beta_t[i]·z, i = n_T..1."""
    n_T = 30
    s = NoiseSchedule.teapearce(n_T)
    beta = s.betas
    alpha = 1 - beta
    alphabar = torch.cumsum(torch.log(alpha), 0).exp()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64)
    zs = [torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64) for _ in range(n_T)]
    x = x0.clone()
    for k, i in enumerate(range(n_T, 0, -1)):
        z = zs[k] if i > 1 else 0
        eps = toy_eps(x, torch.full((4,), i))
        x = (x - eps * (1 - alpha[i]) / torch.sqrt(1 - alphabar[i])) / torch.sqrt(alpha[i]) + torch.sqrt(beta[i]) * z
    ours = sample_ddpm(toy_eps, x0.clone(), s, variance="beta", noise=lambda i, shape: zs[i])
    torch.testing.assert_close(ours, x, rtol=1e-10, atol=1e-10)


def test_homework_timesteps_match_diffusers():
    from diffusers import DDIMScheduler

    s = NoiseSchedule.linear()
    ts = make_timesteps(s, 50, "leading", offset=1)
    assert ts == list(range(981, 0, -20))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", steps_offset=1, set_alpha_to_one=False)
    sched.set_timesteps(50)
    assert sched.timesteps.tolist() == ts


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers_step_by_step(eta):
    from builders import homework_ddim_scheduler

    s = NoiseSchedule.linear()
    sched = homework_ddim_scheduler(s)
    sched.set_timesteps(50)
    g = torch.Generator().manual_seed(7)
    x_start = torch.randn(2, 3, 8, 8, generator=g)
    zs = [torch.randn(2, 3, 8, 8, generator=g) for _ in range(50)]

    trajectory: list[torch.Tensor] = []
    ours = sample_ddim(
        toy_eps,
        x_start.clone(),
        s,
        50,
        offset=1,
        eta=eta,
        noise=lambda i, shape: zs[i],
        callback=lambda info: trajectory.append(info["x"].clone()),
    )
    x = x_start.clone()
    for i, t in enumerate(sched.timesteps):
        eps = toy_eps(x, torch.full((2,), int(t)))
        x = sched.step(eps, t, x, eta=eta, variance_noise=zs[i] if eta > 0 else None).prev_sample
        torch.testing.assert_close(trajectory[i], x, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(ours, x, rtol=2e-5, atol=2e-5)


def test_ddim_eta_zero_is_deterministic_and_needs_no_noise():
    s = NoiseSchedule.linear()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def no_noise(i, shape):
        raise AssertionError("eta = 0 must not draw noise")

    a = sample_ddim(toy_eps, x.clone(), s, 50, offset=1, noise=no_noise)
    b = sample_ddim(toy_eps, x.clone(), s, 50, offset=1)
    assert torch.equal(a, b)


def test_ddim_switches_change_the_last_step_only_as_documented():
    s = NoiseSchedule.linear()
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    base = sample_ddim(toy_eps, x.clone(), s, 50, offset=1)
    one = sample_ddim(toy_eps, x.clone(), s, 50, offset=1, final_alpha="one")
    minus = sample_ddim(toy_eps, x.clone(), s, 50, offset=1, alpha_prev="t-1")
    assert not torch.equal(base, one) and not torch.equal(base, minus)
    with pytest.raises(ValueError, match="final_alpha"):
        sample_ddim(toy_eps, x, s, 50, final_alpha="zero")


@pytest.mark.parametrize("alpha_prev", ["next", "t-1"])
@pytest.mark.parametrize("final_alpha", ["first", "one"])
def test_ddim_conventions_match_the_update_written_out(alpha_prev, final_alpha):
    """The four conventions of passing solutions (HW2_SPEC.md): ᾱ_prev = ᾱ[t − 20] or ᾱ[t − 1],
    and after the last step ᾱ[0] or 1.0, each against the update written out in float64."""
    s = NoiseSchedule.linear()
    ab = s.alpha_bar  # float64
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ts = list(range(981, 0, -20))
    ref = x.clone()
    for i, t in enumerate(ts):
        if i + 1 == len(ts):
            prev = ab[0] if final_alpha == "first" else torch.tensor(1.0, dtype=torch.float64)
        else:
            prev = ab[ts[i + 1]] if alpha_prev == "next" else ab[t - 1]
        eps = toy_eps(ref, torch.full((2,), t))
        x0 = (ref - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
        ref = prev.sqrt() * x0 + (1 - prev).sqrt() * eps
    ours = sample_ddim(toy_eps, x.clone(), s, 50, offset=1, alpha_prev=alpha_prev, final_alpha=final_alpha)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def gaussian_eps(mu: float, std: float, schedule: NoiseSchedule):
    """Exact ε for data ~ N(mu, std²): E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ·mu)/(ᾱ·std² + 1 − ᾱ)."""
    ab_table = schedule.alpha_bar

    def eps(x, t, cond=None):
        ab = ab_table[t].to(x.dtype).reshape(-1, 1, 1, 1)
        return torch.sqrt(1 - ab) * (x - torch.sqrt(ab) * mu) / (ab * std**2 + 1 - ab)

    return eps


@pytest.mark.parametrize(
    ("name", "run"),
    [
        ("ddpm", lambda m, x, s: sample_ddpm(m, x, s, generator=torch.Generator().manual_seed(3))),
        (
            "ddpm-beta",
            lambda m, x, s: sample_ddpm(m, x, s, variance="beta", generator=torch.Generator().manual_seed(3)),
        ),
        ("ddim", lambda m, x, s: sample_ddim(m, x, s, 999)),
        ("ddim-eta1", lambda m, x, s: sample_ddim(m, x, s, 999, eta=1.0, generator=torch.Generator().manual_seed(3))),
        ("dpm", lambda m, x, s: sample_dpm(m, x, s, 50)),
        ("unipc", lambda m, x, s: sample_unipc(m, x, s, 50)),
    ],
)
def test_samplers_reach_the_data_distribution(name, run):
    """With the exact ε of a Gaussian data set, every sampler must produce that Gaussian.

    Steps are fine enough for the discretisation error to vanish: at 50 DDIM steps the variance
    is visibly too small (0.47 instead of 0.5), which is the method's, not the code's, error.
    Respaced DDPM with σ² = β̃ is left out for the same reason (it drops the x₀ uncertainty)."""
    s = NoiseSchedule.linear()
    mu, std = 0.3, 0.5
    x = torch.randn(2000, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (x - x.mean()) / x.std()  # exactly N(0, 1) moments, so only the sampler's error remains
    out = run(gaussian_eps(mu, std, s), x, s)
    assert abs(out.mean().item() - mu) < 0.02, name
    assert abs(out.std().item() - std) < 0.02, name


def test_guidance_is_one_batched_forward_with_the_formula():
    calls = []

    def model(x, t, cond):
        calls.append(x.shape[0])
        return x * (cond.to(x.dtype).reshape(-1, 1, 1, 1) + 1) + t.to(x.dtype).reshape(-1, 1, 1, 1)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([5, 6, 7])
    cond = torch.tensor([1, 2, 3])
    w = 2.5
    out = classifier_free_guidance(model, w, torch.tensor([20]))(x, t, cond)
    calls_made = list(calls)
    expected = (1 + w) * model(x, t, cond) - w * model(x, t, torch.full((3,), 20))
    torch.testing.assert_close(out, expected)
    assert calls_made == [6]
    assert classifier_free_guidance(model, 0.0, torch.tensor([20])) is model


def test_callback_sees_every_step_and_changes_nothing():
    s = NoiseSchedule.linear()
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    seen = []
    a = sample_ddim(toy_eps, x.clone(), s, 10, callback=lambda info: seen.append(info["t"]))
    b = sample_ddim(toy_eps, x.clone(), s, 10)
    assert torch.equal(a, b)
    assert seen == make_timesteps(s, 10)


def test_bad_sampler_arguments():
    s = NoiseSchedule.linear()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="number of steps must be between 1 and 1000"):
        make_timesteps(s, 0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_ddim(toy_eps, x, s, [5, 10])
    with pytest.raises(ValueError, match="variance"):
        sample_ddpm(toy_eps, x, s, 3, variance="learned")


def test_ddim_step_clips_x0_before_using_it():
    from hw2cli.diffusion import ddim_step

    g = torch.Generator().manual_seed(9)
    x, eps = torch.randn(1, 3, 4, 4, generator=g) * 3, torch.randn(1, 3, 4, 4, generator=g)
    ab, ab_prev = 0.3, 0.6
    out, x0 = ddim_step(eps, x, ab, ab_prev, 0.0, None, clip_x0=True)
    expected_x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
    assert torch.equal(x0, expected_x0) and x0.abs().max() <= 1
    torch.testing.assert_close(out, math.sqrt(ab_prev) * expected_x0 + math.sqrt(1 - ab_prev) * eps)


@pytest.mark.parametrize("sampler", [sample_dpm, sample_unipc])
def test_dpm_with_clipping_keeps_a_far_data_mean_in_range(sampler):
    """Data far outside [-1, 1]: without thresholding the sampler follows it, with it the output stays bounded."""
    s = NoiseSchedule.linear()
    x = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    free = sampler(gaussian_eps(5.0, 0.1, s), x.clone(), s, 20)
    clipped = sampler(gaussian_eps(5.0, 0.1, s), x.clone(), s, 20, clip_x0=True)
    assert free.mean() > 4 and clipped.abs().max() <= 1.0 + 1e-6


def test_autocast_eps_returns_fp32_and_is_identity_in_fp32():
    from hw2cli.diffusion.wrappers import autocast_eps

    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    model = lambda x, t, c: net(x)  # noqa: E731
    assert autocast_eps(model, torch.device("cpu"), torch.float32) is model
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = autocast_eps(model, torch.device("cpu"), torch.bfloat16)(x, torch.zeros(2), None)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, net(x), rtol=0.05, atol=0.05)
