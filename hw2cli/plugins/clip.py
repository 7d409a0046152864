"""`hw2 clip`: P3a, CLIP zero-shot classification of the validation set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import typer

from hw2cli import ui

app = typer.Typer(
    help="P3a: CLIP zero-shot classification of the validation set.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _default_workers() -> int:
    return min(8, os.cpu_count() or 1)


@app.command("eval")
def eval_command(
    data: Path = typer.Option(
        None,
        "--data",
        help="Images: a folder of <id>_<n>.png (the homework's), an ImageFolder tree or a CSV of path,label "
        "\\[default: clip_zeroshot/val in DATA_ROOT].",
    ),
    labels: Path = typer.Option(None, "--labels", help="id2label.json \\[default: beside or inside --data]."),
    model: str = typer.Option(
        None,
        "--model",
        help="open_clip: a model name (ViT-B-32) or model-config .json; transformers: a Hub id or a saved folder "
        "\\[default: ViT-B-32; with transformers, its openai twin on the Hub].",
    ),
    pretrained: str = typer.Option(
        None,
        "--pretrained",
        help="open_clip weights: a tag (openai, laion2b_s34b_b79k and others) or a checkpoint file "
        "(.pt, .bin, .safetensors) \\[default: openai].",
    ),
    backend: Literal["open_clip", "transformers"] = typer.Option(
        "open_clip", "--backend", help="open_clip or transformers."
    ),
    templates: str = typer.Option(
        "single",
        "--templates",
        help="single ('a photo of a {}.'), cifar (18), imagenet (80) or a file: "
        "one template with {} per line, ensembled.",
    ),
    batch: int = typer.Option(256, "--batch", min=1, max=65_536, help="Images per forward pass."),
    workers: int = typer.Option(
        None,
        "--workers",
        min=0,
        max=256,
        help="DataLoader processes decoding images (0: in this process) \\[default: CPU count, at most 8].",
    ),
    out: Path = typer.Option(None, "--out", help="Report folder \\[default: the clip folder of OUTPUT_ROOT]."),
    examples: int = typer.Option(5, min=1, max=100, help="Correct and incorrect examples in the figure (each)."),
    precision: Literal["auto", "fp32", "fp16", "bf16"] = typer.Option(
        "auto", help="auto (fp16 autocast on CUDA, bf16 with --dtype bf16; fp32 on CPU), fp32, fp16 or bf16."
    ),
    quick_gelu: bool = typer.Option(
        None,
        "--quick-gelu/--no-quick-gelu",
        help="For a checkpoint file: force QuickGELU on/off \\[default: on for OpenAI weights].",
    ),
    text_cache: bool = typer.Option(
        True, "--text-cache/--no-text-cache", help="Reuse the class text features cached under WEIGHTS_DIR."
    ),
    show_classes: int = typer.Option(10, min=0, max=100_000, help="Rows of the per-class table, worst first (0: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Zero-shot accuracy (top-1, top-5), per-class table, confusions, an example figure, predictions.csv.

    Examples:
      hw2 clip eval --data hw2_data/clip_zeroshot/val
      hw2 clip eval --data hw2_data/clip_zeroshot/val --templates cifar --pretrained laion2b_s34b_b79k
      hw2 clip eval --data val --backend transformers --model openai/clip-vit-base-patch32
      hw2 clip eval --data val --pretrained ~/.cache/clip/ViT-B-32.pt      # a local checkpoint, offline
    """
    from hw2cli import runtime, settings
    from hw2cli.io.atomic import check_output_folder, listed
    from hw2cli.tasks.clip import evaluate

    workers = _default_workers() if workers is None else workers
    current = settings.get()
    data = data if data is not None else current.data_root / "clip_zeroshot" / "val"
    out = check_output_folder(out if out is not None else current.output_root / "clip", "report folder")
    device, dtype = runtime.setup()

    def loaded(clip, dataset, template_name, template_list, notes) -> None:
        for note in notes:
            ui.info(f"note: {note}")
        if dataset.skipped:
            ui.warn(
                f"left out {ui.plural(len(dataset.skipped), 'path')} named like an image that is not a file "
                f"(a broken link or a folder): {listed([str(p) for p in dataset.skipped])}."
            )
        ui.info(
            f"{clip.name} [{backend}, {clip.precision}] on {device}: {len(dataset.files)} images, "
            f"{len(dataset.classnames)} classes, {len(template_list)} template(s) ({template_name})"
        )
        bar.reset(len(dataset.files))

    with ui.progress("clip zero-shot", None) as bar:
        run = evaluate(
            data,
            out,
            device=device,
            dtype=dtype,
            labels=labels,
            model=model,
            pretrained=pretrained,
            backend=backend,
            templates=templates,
            precision=precision,
            quick_gelu=quick_gelu,
            batch_size=batch,
            num_workers=workers,
            text_cache_root=current.weights_dir if text_cache else None,
            weights_dir=current.weights_dir,
            offline=current.offline,
            examples=examples,
            seed=current.seed,
            on_loaded=loaded,
            on_batch=bar.update,
        )
    report, metrics = run.report, run.metrics
    where = f" ({report.text_cache_file})" if report.text_cache_file else ""
    ui.info(
        {
            "hit": f"text features: cache hit, text tower skipped{where}",
            "miss": f"text features: computed in {report.seconds['text']:.2f}s and cached{where}",
            "off": "text features: computed (cache off)",
        }[report.text_cache]
    )
    if as_json:
        ui.print_json(metrics)
        return
    per_class = metrics["per_class"]
    shown = per_class if show_classes <= 0 else per_class[:show_classes]
    title = "per-class accuracy, worst first" + (
        "" if len(shown) == len(per_class) else f" ({len(shown)} of {len(per_class)})"
    )
    ui.print_table(
        ["class", "accuracy", "correct", "images"],
        [[r["class"], f"{r['accuracy']:.1%}", r["correct"], r["count"]] for r in shown],
        title=title,
        justify=["left", "right", "right", "right"],
    )
    if metrics["confused_pairs"]:
        ui.print_table(
            ["true", "predicted as", "images"],
            [[p["true"], p["predicted"], p["count"]] for p in metrics["confused_pairs"][:5]],
            title="most confused pairs",
            justify=["left", "left", "right"],
        )
    rate = metrics["images_per_s"]
    ui.result(
        f"top-1 {metrics['top1']:.2%}  top-{metrics['k']} {metrics['top5']:.2%}  "
        f"({metrics['images']} images, {metrics['classes']} classes" + (f", {rate:.1f} images/s" if rate else "") + ")"
    )
    ui.result(f"wrote {metrics['files']['predictions']}, {metrics['files']['metrics']}, {metrics['files']['examples']}")
