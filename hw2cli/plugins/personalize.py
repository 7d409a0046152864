"""`hw2 personalize`: P3b, textual inversion and Custom Diffusion on Stable Diffusion v1."""

from __future__ import annotations

from pathlib import Path

import typer

from hw2cli import ui

app = typer.Typer(
    help="P3b: personalise Stable Diffusion (textual inversion, Custom Diffusion); graded generation and CLIP grading.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

MODEL_HELP = "Stable Diffusion v1: sd-v1-4.ckpt (offline), a diffusers folder, or a Hub id."


def _pipeline(model: Path | str, dtype_name: str | None = None):
    from hw2cli import runtime, settings
    from hw2cli.models.sd import load_pipeline

    device, dtype = runtime.setup()
    if device.type == "cpu":
        dtype = __import__("torch").float32  # half precision on CPU is slow and lossy
    current = settings.get()
    return load_pipeline(model, device=device, dtype=dtype, cache=current.weights_dir, offline=current.offline)


@app.command()
def train(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    concept: list[str] = typer.Option(..., "--concept", help="'<new1>=folder:initword[:object|style]'; repeat."),
    method: str = typer.Option("textual-inversion", help="textual-inversion or custom-diffusion."),
    steps: int = typer.Option(3000, help="Optimizer steps."),
    lr: float = typer.Option(5e-3, help="Learning rate of the new token rows."),
    kv_lr: float = typer.Option(1e-5, help="Custom Diffusion: learning rate of the K/V projections."),
    batch: int = typer.Option(1, help="Batch size."),
    resolution: int = typer.Option(512, help="Training resolution (multiple of 8)."),
    reg: str = typer.Option(None, help="Custom Diffusion regularisation: 'folder:class prompt'."),
    out: Path = typer.Option(Path("runs/personalize"), help="Run folder."),
    checkpoint_every: int = typer.Option(500, help="Save every N steps."),
    seed: int = typer.Option(None, help="Random seed [default: the seed setting]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
) -> None:
    """Learn new tokens; saves learned_embeds.safetensors per token (diffusers format).

    Examples:
      hw2 personalize train --model sd-v1-4.ckpt --concept "<new1>=hw2_data/textual_inversion/0:dog"
      hw2 personalize train --model sd-v1-4.ckpt --method custom-diffusion \\
          --concept "<new1>=hw2_data/textual_inversion/0:dog" --concept "<new2>=hw2_data/textual_inversion/1:painting"
    """
    from hw2cli import runtime, settings
    from hw2cli.tasks.personalize import PersonalizeOptions, train_personalization

    current = settings.get()
    opts = PersonalizeOptions(
        model=model,
        concepts=list(concept),
        out=str(out),
        method=method,
        steps=steps,
        lr=lr,
        kv_lr=kv_lr,
        batch=batch,
        resolution=resolution,
        reg=reg,
        checkpoint_every=checkpoint_every,
        seed=current.seed if seed is None else seed,
    )
    device, _ = runtime.setup()
    with ui.progress(method, None) as bar:
        result = train_personalization(
            opts,
            device=device,
            cache=current.weights_dir,
            offline=current.offline,
            resume=resume,
            on_start=lambda first, total: bar.reset(total, first),
            on_step=lambda step, metrics: bar.update(1, **metrics),
        )
    ui.result(f"done: step {result.step}, tokens {', '.join(result.tokens)}; saved in {result.out}")


@app.command()
def generate(
    input_json: Path = typer.Argument(None, help="The homework's input.json (graded layout)."),
    out: Path = typer.Argument(Path("outputs/personalize"), help="Output folder."),
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    embeds: list[Path] = typer.Option(None, help="Learned embeddings (run folder, token folder or .safetensors)."),
    prompt: str = typer.Option(
        None, help="A free prompt instead of input.json, e.g. 'A <new1> in the style of <new2>.'"
    ),
    n: int = typer.Option(4, "-n", help="With --prompt: how many images."),
    steps: int = typer.Option(50, help="Sampler steps."),
    guidance: float = typer.Option(7.5, help="Classifier-free guidance scale."),
    sampler: str = typer.Option("dpm", help="dpm (DPM-Solver++) or ddim."),
    seed: int = typer.Option(0, help="Seed: the same images on every run."),
    batch: int = typer.Option(5, help="Images per batch."),
    resolution: int = typer.Option(None, help="Image side [default: the model's]."),
) -> None:
    """The graded hw2_3.sh layout: OUT/<key>/<idx>/source<key>_prompt<idx>_<n>.png, 25 per prompt.

    Examples:
      hw2 personalize generate hw2_data/textual_inversion/input.json out/p3 --model sd-v1-4.ckpt
      hw2 personalize generate --prompt "A <new1> in the style of <new2>." -n 4 --model sd-v1-4.ckpt --embeds runs/cd
    """
    from hw2cli.errors import RunError, UsageError
    from hw2cli.io.atomic import save_image
    from hw2cli.tasks.personalize import (
        check_prompt_tokens,
        default_embeddings,
        generate_graded,
        generate_images,
        load_embeddings,
        read_input_json,
        set_sampler,
        slug,
    )

    if input_json is None and prompt is None:
        raise UsageError("give the input.json to generate the graded layout, or --prompt for a free prompt.")
    if prompt is None:
        read_input_json(input_json)  # fail on a bad file before loading the model
    sources = list(embeds or [])
    if not sources:
        default = default_embeddings()
        if default is None:
            raise RunError(
                "this install has no trained embeddings for <new1>/<new2> yet; pass --embeds runs/... "
                "(train them with `hw2 personalize train`)."
            )
        sources = [default]
    pipe = _pipeline(model)
    tokens = load_embeddings(pipe, sources)
    set_sampler(pipe, sampler)
    ui.info(f"loaded {', '.join(tokens)}")
    if prompt is not None:
        check_prompt_tokens(pipe, [prompt])
        with ui.progress("generate", n) as bar:
            images = generate_images(
                pipe,
                prompt,
                n,
                steps=steps,
                guidance=guidance,
                seed=seed,
                batch=batch,
                resolution=resolution,
                on_batch=bar.update,
            )
        name = slug(prompt.replace(" ", "_"))[:60] or "prompt"
        paths = [save_image(img, out / f"{name}_{i}.png") for i, img in enumerate(images)]
        ui.result(f"wrote {len(paths)} images to {out}")
        return
    data = read_input_json(input_json)
    total = sum(len(e["prompt"]) for e in data.values()) * 25
    with ui.progress("generate", total) as bar:
        written = generate_graded(
            pipe,
            input_json,
            out,
            steps=steps,
            guidance=guidance,
            seed=seed,
            batch=batch,
            resolution=resolution,
            on_batch=bar.update,
        )
    ui.result(f"wrote {written} images under {out}")


@app.command("eval")
def eval_command(
    out: Path = typer.Argument(..., help="The generated folder (OUT/<key>/<idx>/*.png)."),
    input_json: Path = typer.Option(..., "--json", help="The input.json with prompt_4_clip_eval and baselines."),
    refs: Path = typer.Option(..., "--refs", help="Reference images: hw2_data/textual_inversion (one folder per key)."),
    clip_model: str = typer.Option("openai/clip-vit-base-patch32", help="The grader's CLIP (Hub id or local folder)."),
    as_json: bool = typer.Option(False, "--as-json", help="Machine-readable output."),
) -> None:
    """The P3 grader: image and text CLIP scores of the best 5 of 25, pass/fail per prompt."""
    from hw2cli import runtime, settings
    from hw2cli.models.clip import load_clip
    from hw2cli.tasks.personalize import grade, read_input_json

    read_input_json(input_json, need_eval=True)
    device, _ = runtime.setup()
    clip = load_clip(clip_model, None, "transformers", device, settings.get().weights_dir)
    scores = grade(out, input_json, refs, clip)
    if as_json:
        ui.print_json(
            [
                {
                    "key": s.key,
                    "prompt_index": s.index,
                    "prompt": s.prompt,
                    "image_score": s.image_score,
                    "text_score": s.text_score,
                    "baseline": list(s.baseline),
                    "passed": s.passed,
                }
                for s in scores
            ]
        )
        return
    ui.print_table(
        ["concept", "prompt", "image", "text", "baseline", "pass"],
        [
            [
                s.key,
                s.index,
                f"{s.image_score:.2f}",
                f"{s.text_score:.2f}",
                f"{s.baseline[0]:g}/{s.baseline[1]:g}",
                "yes" if s.passed else "NO",
            ]
            for s in scores
        ],
        title="P3 CLIP scores (best 5 of 25)",
    )
    ui.result(f"{sum(s.passed for s in scores)}/{len(scores)} prompts pass")
