"""`hw2 personalize`: P3b, textual inversion and Custom Diffusion on Stable Diffusion v1."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from hw2cli import ui
from hw2cli.plugins._options import keep_finished, nothing_to_train, number, under_output_root, unused
from hw2cli.plugins._options import seed as seed_option

app = typer.Typer(
    help="P3b: personalise Stable Diffusion (textual inversion, Custom Diffusion); graded generation and CLIP grading.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

MODEL_HELP = "Stable Diffusion v1: sd-v1-4.ckpt or a .safetensors file (offline), a diffusers folder, or a Hub id."
RESOLUTION = {"min": 8, "max": 2048}


def _check_resolution(value: int | None) -> None:
    from hw2cli.errors import UsageError

    if value is not None and value % 8:
        raise UsageError(f"--resolution is {value}; expected a multiple of 8 (the VAE downsamples by 8).")


@app.command()
def train(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    concept: list[str] = typer.Option(
        ...,
        "--concept",
        help="TOKEN=FOLDER:INIT, with :style at the end for a style, e.g. <new1>=ti/0:dog or "
        "'<new2>=ti/1:David Revoy:style'; INIT is the word or phrase the token starts as; repeat for more tokens.",
    ),
    method: Literal["textual-inversion", "custom-diffusion"] = typer.Option(
        "textual-inversion", help="textual-inversion or custom-diffusion."
    ),
    steps: int = typer.Option(
        None, min=1, max=1_000_000, help="Optimizer steps \\[default: 2,000 per concept, as --train-missing]."
    ),
    lr: float = number(5e-3, min=1e-9, max=1.0, help="Learning rate of the new token rows."),
    kv_lr: float = number(1e-5, min=1e-12, max=1.0, help="Custom Diffusion: learning rate of the K/V projections."),
    batch: int = typer.Option(1, min=1, max=256, help="Batch size."),
    resolution: int = typer.Option(512, **RESOLUTION, help="Training resolution (multiple of 8)."),
    reg: str = typer.Option(None, help="Custom Diffusion regularisation: 'folder:class prompt'."),
    out: Path = typer.Option(Path("runs/personalize"), help="Run folder."),
    checkpoint_every: int = typer.Option(500, min=1, max=1_000_000, help="Save every N steps."),
    seed: int = seed_option(None, "Random seed [default: the seed setting]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
) -> None:
    """Learn new tokens; saves learned_embeds.safetensors per token (diffusers format).

    Examples:
      hw2 personalize train --model sd-v1-4.ckpt --concept "<new1>=hw2_data/textual_inversion/0:dog"
      hw2 personalize train --model sd-v1-4.ckpt --method custom-diffusion \\
          --concept "<new1>=hw2_data/textual_inversion/0:dog" --concept "<new2>=hw2_data/textual_inversion/1:painting"
    """
    from hw2cli import runtime, settings
    from hw2cli.io.atomic import check_output_folder
    from hw2cli.pretrained.sd_source import model_kind
    from hw2cli.tasks.personalize.auto import STEPS_PER_CONCEPT
    from hw2cli.tasks.personalize.concepts import check_concept_tokens, parse_concept, slug
    from hw2cli.tasks.personalize.train import (
        PersonalizeOptions,
        check_out_apart,
        parse_reg,
        train_personalization,
    )

    _check_resolution(resolution)
    if method == "textual-inversion":
        unused(ctx, ["kv_lr", "reg"], "for --method custom-diffusion (textual inversion trains no K/V)")
    specs = [parse_concept(spec) for spec in concept]  # every concept checked before the model loads
    check_concept_tokens([spec.token for spec in specs])
    reg_folder = parse_reg(reg)[0] if reg else None
    check_out_apart(out, model=model, concepts=specs, reg_folder=reg_folder)  # the run written into an input
    check_output_folder(out, "run folder")
    for spec in specs:
        check_output_folder(out / slug(spec.token), "token folder", within=out)
    model_kind(model)  # a mistyped path is said now, not after diffusers has loaded
    current = settings.get()
    opts = PersonalizeOptions(
        model=model,
        concepts=list(concept),
        out=str(out),
        method=method,
        steps=steps if steps is not None else STEPS_PER_CONCEPT * len(concept),
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
            note=ui.info,
            on_start=lambda first, total: bar.reset(max(total, first), first),  # never 99/5
            on_step=lambda step, metrics: bar.update(1, **metrics),
        )
    if resume and result.step == result.first:  # nothing left to train
        ui.result(
            f"{nothing_to_train(out, result.step, opts.steps)}; tokens {', '.join(result.tokens)} in {result.out}"
        )
        return
    ui.result(f"done: step {result.step}, tokens {', '.join(result.tokens)}; saved in {result.out}")


@app.command()
def generate(
    ctx: typer.Context,
    input_json: Path = typer.Argument(None, metavar="INPUT_JSON", help="The homework's input.json (graded layout)."),
    out: Path = typer.Argument(
        None, metavar="OUT", help="Output folder \\[default: the personalize folder of OUTPUT_ROOT]."
    ),
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    embeds: list[Path] = typer.Option(
        None, help="Learned embeddings (run folder, token folder or .safetensors); repeat for several runs."
    ),
    prompt: str = typer.Option(
        None, help="A free prompt instead of input.json, e.g. 'A <new1> in the style of <new2>.'"
    ),
    n: int = typer.Option(4, "-n", min=1, max=1000, help="With --prompt: how many images."),
    steps: int = typer.Option(50, min=1, max=1000, help="Sampler steps."),
    guidance: float = number(7.5, min=0.0, max=100.0, help="Classifier-free guidance scale."),
    sampler: Literal["dpm", "ddim"] = typer.Option("dpm", help="dpm (DPM-Solver++) or ddim."),
    seed: int = seed_option(0, "Seed: the same images on every run (the seed setting does not apply)."),
    batch: int = typer.Option(5, min=1, max=64, help="Images per batch."),
    resolution: int = typer.Option(None, **RESOLUTION, help="Image side, a multiple of 8 \\[default: the model's]."),
    resume: bool = keep_finished(),
    train_missing: bool = typer.Option(
        False,
        "--train-missing",
        help="Learn the tokens no embedding provides first (textual inversion on the concept's reference "
        "images; what hw2_3.sh does); kept in the personalize folder of WEIGHTS_DIR, so a rerun reuses or "
        "continues them.",
    ),
    refs: Path = typer.Option(
        None, help="With --train-missing: the reference folders (REFS/<key>) \\[default: the input.json's folder]."
    ),
    train_steps: int = typer.Option(
        2000, min=1, max=1_000_000, help="With --train-missing: textual-inversion steps per concept."
    ),
) -> None:
    """The graded hw2_3.sh layout: OUT/<key>/<idx>/source<key>_prompt<idx>_<n>.png, 25 per prompt.

    Each `<token>` the prompts use needs learned embeddings: --embeds, the ones this install
    ships, or --train-missing, which learns them here from the images in REFS/<key> (or
    REFS/<src_image>), starting from the word prompt_4_clip_eval puts in the token's place, as a
    style where a prompt says "in the style of <token>". Training is long (hours on a CPU; on a
    GPU not measured yet); an interrupted one continues on the next run.

    Examples:
      hw2 personalize generate hw2_data/textual_inversion/input.json out/p3 --model sd-v1-4.ckpt --train-missing
      hw2 personalize generate hw2_data/textual_inversion/input.json out/p3 --model sd-v1-4.ckpt \\
          --embeds runs/personalize
      hw2 personalize generate --prompt "A <new1> in the style of <new2>." -n 4 --model sd-v1-4.ckpt --embeds runs/cd
    """
    from hw2cli import runtime, settings
    from hw2cli.data.prompts import read_input_json
    from hw2cli.errors import UsageError
    from hw2cli.io.atomic import check_output_folder
    from hw2cli.pretrained.sd_source import model_kind

    _check_resolution(resolution)
    entries = None
    if prompt is not None:
        if input_json is not None and out is None:  # `--prompt ... OUT`: the one positional is the folder
            input_json, out = None, input_json
        elif input_json is not None:
            raise UsageError("with --prompt, give only the output folder; an input.json is for the graded layout.")
    elif input_json is None:
        raise UsageError("give the input.json to generate the graded layout, or --prompt for a free prompt.")
    else:
        entries = read_input_json(input_json)  # a bad file fails before the model loads
        unused(ctx, ["n"], "for --prompt (the graded layout makes 25 images per prompt)")
    if not train_missing:
        unused(ctx, ["train_steps", *(["refs"] if entries is not None else [])], "for --train-missing")
    if prompt is not None and not prompt.strip():
        raise UsageError(f"--prompt {prompt!r} holds no words; give the text to draw.")
    out = check_output_folder(under_output_root(out, "personalize"))
    _check_out_reads_nothing(out, model, entries, refs=[refs] if refs else _default_refs(input_json) if entries else [])
    for key, entry in (entries or {}).items():
        for idx in range(len(entry["prompt"])):
            check_output_folder(out / key / str(idx), "prompt folder", within=out)
    for source in embeds or []:
        if not Path(source).exists():
            raise UsageError(f"--embeds {source} does not exist.")
    if entries is None and (train_missing or refs is not None):
        raise UsageError(
            "--train-missing and --refs learn the concepts of an input.json; a free --prompt needs --embeds."
        )
    model_kind(model)  # a mistyped path is said at once, before any training plan or import of torch
    from hw2cli.tasks.personalize.generate import generate

    device, dtype = runtime.setup()
    current = settings.get()
    sources = list(embeds or [])
    if train_missing and entries is not None:
        sources = _train_missing(
            entries, sources, model=model, refs=[refs] if refs else _default_refs(input_json), steps=train_steps,
            resolution=resolution, device=device, current=current, seed=seed,
        )  # fmt: skip
    ui.on_interrupt(ui.KEPT if resume else None)
    with ui.progress("generate", None) as bar:

        def started(total: int, tokens: list[str]) -> None:
            if tokens:
                ui.info(f"loaded {', '.join(tokens)}")
            bar.reset(total)

        result = generate(
            model, out, device=device, dtype=dtype, weights_dir=current.weights_dir, offline=current.offline,
            entries=entries, prompt=prompt, embeddings=sources, n=n, steps=steps, guidance=guidance,
            sampler=sampler, seed=seed, batch=batch, resolution=resolution, resume=resume, note=ui.info, warn=ui.warn,
            on_start=started, on_batch=bar.update,
        )  # fmt: skip
    kept = f"; kept {result['reused']} finished by an earlier run" if result["reused"] else ""
    where = f"to {out}" if prompt is not None else f"under {out}"
    ui.result(f"wrote {ui.plural(result['written'], 'image')} {where}{kept}")
    if result.get("sheet"):
        ui.result(f"wrote {result['sheet']} (the images side by side)")


def _check_out_reads_nothing(out: Path, model: str, entries: dict | None, refs: list[Path]) -> None:
    """OUT, and each prompt folder it gets, is neither the model's folder nor a concept's reference
    folder (``REFS/<key>``, ``REFS/<src_image>``), nor inside one (links resolved): the images
    would be written among what this command, ``--train-missing`` or the grader reads."""
    from hw2cli.errors import UsageError

    read = [(Path(model), "the --model folder")] if Path(model).is_dir() else []
    for root in refs:
        for key, entry in (entries or {}).items():
            for name in dict.fromkeys((key, str(entry.get("src_image") or ""))):
                if name and not Path(name).is_absolute() and ".." not in Path(name).parts and (root / name).is_dir():
                    read.append((root / name, f"the reference folder of concept {key!r}"))
    from hw2cli.io.atomic import input_holding

    held = input_holding(out, read)
    if held is not None:
        raise UsageError(f"OUT {out} {held}; choose another output folder.")
    for key, entry in (entries or {}).items():
        for idx in range(len(entry["prompt"])):
            written = out / key / str(idx)
            held = input_holding(written, read)
            if held is not None:
                raise UsageError(f"OUT {out} would put the images of concept {key!r} in {written}, which {held}; "
                                 "choose another output folder.")  # fmt: skip


def _default_refs(input_json: Path) -> list[Path]:
    """Where the reference folders are looked for: beside the input.json, then the homework's
    DATA_ROOT/textual_inversion (a private input.json may be kept elsewhere), then the
    ``hw2_data/textual_inversion`` of the checkout hw2 runs from (a grader runs ``hw2_3.sh`` from
    any folder, and the script takes no more arguments)."""
    import hw2cli
    from hw2cli import settings

    folders = [input_json.parent, settings.get().data_root / "textual_inversion"]
    checkout = Path(hw2cli.__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        folders.append(checkout / "hw2_data" / "textual_inversion")
    return list(dict.fromkeys(folders))


def _train_missing(
    entries: dict, sources: list[Path], *, model: str, refs: list[Path], steps: int, resolution: int | None, device,
    current, seed: int,
) -> list[Path]:  # fmt: skip
    """``sources`` plus the run that learns the tokens none of them provides (trained now, or
    found finished, or continued); the first of ``refs`` that holds every concept's folder serves.
    It trains with the command's own ``seed`` (fixed, like its images), not the seed setting."""
    from hw2cli.tasks.personalize import auto
    from hw2cli.tasks.personalize.generate import embedding_sources

    prompts = [p for e in entries.values() for p in e["prompt"]]
    sources, missing = embedding_sources(prompts, sources)
    if not missing:
        return sources
    plan = auto.plan_from_first(
        model, entries, missing, refs, weights_dir=current.weights_dir, steps_per_concept=steps,
        resolution=resolution, seed=seed,
    )  # fmt: skip
    from hw2cli.tasks.grading import ambiguous_references

    for note in plan.notes:
        ui.warn(note)
    for concept in plan.concepts:
        for note in ambiguous_references(concept.folder.parent, {concept.key: entries[concept.key]}):
            ui.warn(note)
    if auto.finished(plan):
        ui.info(f"using {', '.join(missing)} learned by an earlier run ({plan.out})")
    else:
        slow = " (hours on a CPU)" if device.type == "cpu" and plan.opts.steps >= 100 else ""
        ui.info(
            f"no embeddings for {', '.join(missing)}: learning {plan.describe()}; {plan.opts.steps} steps "
            f"on {device.type}{slow}, kept in {plan.out} (an interrupted run continues)"
        )
        from hw2cli.tasks.training import TrainingInterrupted

        with ui.progress("textual inversion", None) as bar:
            try:
                auto.train_planned(
                    plan, device=device, offline=current.offline, note=ui.info,
                    on_start=lambda first, total: bar.reset(total, first),
                    on_step=lambda step, metrics: bar.update(1, **metrics),
                )  # fmt: skip
            except TrainingInterrupted as exc:  # the trainer's advice (add --resume) is not this command's
                text = str(exc.args[0]).replace(
                    "Continue with the same command and {opt:resume}.", "Run the same command again to continue."
                )
                raise TrainingInterrupted(
                    text.replace("{opt:resume} continues", "the same command continues")
                ) from None
    return [*sources, plan.out]


@app.command("eval")
def eval_command(
    out: Path = typer.Argument(..., metavar="OUT", help="The generated folder (OUT/<key>/<idx>/*.png)."),
    input_json: Path = typer.Argument(
        None,
        metavar="INPUT_JSON",
        help="The input.json with prompt_4_clip_eval and baselines "
        "\\[default: DATA_ROOT/textual_inversion/input.json].",
    ),
    refs: Path = typer.Option(
        None, "--refs", help="Reference images, one folder per key \\[default: the input.json's folder]."
    ),
    clip_model: str = typer.Option("openai/clip-vit-base-patch32", help="The grader's CLIP (Hub id or local folder)."),
    preprocess: Literal["homework", "model"] = typer.Option(
        "homework",
        help="homework: the TA's grader's image preprocessing (transformers 4.19.2's CLIP arithmetic); "
        "model: the loaded CLIP's own processor.",
    ),
    as_json: bool = typer.Option(False, "--json", "--as-json", help="Machine-readable output."),
    sheet: Path = typer.Option(
        None, metavar="PNG", help="Also draw the 5 kept images of every prompt, with their scores, into this PNG."
    ),
) -> None:
    """The P3 grader: image and text CLIP scores of the best 5 of 25, pass/fail per prompt.

    Images are preprocessed as the homework's grader does (transformers 4.19.2: bicubic resize
    of the short side to 224 with the long side truncated, centre crop at int((side-224+1)/2)),
    which moves scores by up to 0.01 per image against transformers 5's processor. Files in a
    reference folder that are not images (.png, .jpg, .jpeg, .webp, .bmp) are skipped with a
    warning; the TA's grader would try to open them and fail.

    Examples:
      hw2 personalize eval out/p3 hw2_data/textual_inversion/input.json
      hw2 personalize eval out/p3 --json          # DATA_ROOT's input.json, scores as JSON
      hw2 personalize eval out/p3 --sheet report/p3_best5.png
      hw2 personalize eval out/p3 my/input.json --refs hw2_data/textual_inversion
    """
    from hw2cli import runtime, settings
    from hw2cli.data.prompts import read_input_json
    from hw2cli.pretrained.clip import load_clip
    from hw2cli.tasks.grading import ambiguous_references, grade, grading_plan

    current = settings.get()
    input_json = input_json if input_json is not None else current.data_root / "textual_inversion" / "input.json"
    refs = refs if refs is not None else input_json.parent
    if sheet is not None:
        from hw2cli.errors import UsageError
        from hw2cli.io.atomic import check_output_file

        sheet = check_output_file(sheet, "figure", image=True)
        if out.resolve() in sheet.resolve().parents[1:]:
            raise UsageError(
                f"--sheet {sheet} is inside a graded folder of {out}, which must hold only its 25 images; "
                "put it elsewhere (OUT itself will do)."
            )
    entries = read_input_json(input_json, need_eval=True)
    jobs = grading_plan(out, entries, refs)  # every folder checked first
    if sheet is not None:
        for folder in {job.references[0].parent for job in jobs}:
            if folder.resolve() in sheet.resolve().parents:
                raise UsageError(
                    f"--sheet {sheet} is inside the reference folder {folder}: the next grading would read it "
                    "as a reference image; put it elsewhere."
                )
    for note in ambiguous_references(refs, entries):
        ui.warn(note)
    from hw2cli.tasks.grading import layout_notes

    for note in layout_notes(out, entries):
        ui.warn(note)
    for folder, ignored in {j.references[0].parent: j.ignored for j in jobs if j.ignored}.items():
        ui.warn(f"{folder}: skipped {len(ignored)} non-image file(s) ({', '.join(p.name for p in ignored[:3])}).")
    device, _ = runtime.setup()
    from hw2cli.errors import HW2Error

    try:
        clip = load_clip(clip_model, None, "transformers", device, current.weights_dir, offline=current.offline)
    except HW2Error as exc:  # the loader names its model parameter; here that is --clip-model
        raise type(exc)(str(exc.args[0]).replace("{opt:model}", "{opt:clip_model}")) from exc.__cause__
    scores = grade(out, input_json, refs, clip, preprocess=preprocess)
    if sheet is not None:
        from hw2cli.tasks.grading import best_sheet

        wrote = f"wrote {best_sheet(scores, sheet, clip_name=clip_model)}"
        if as_json:  # stdout holds only the JSON
            ui.info(wrote)
        else:
            ui.result(wrote)
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
                    "kept": [{"file": f.name, "image_score": i, "text_score": t} for f, i, t in s.best],
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
