"""Training new tokens on Stable Diffusion v1: textual inversion and Custom Diffusion.

- Textual inversion (Gal et al. 2022): the new tokens' rows are one ``[k, dim]`` parameter beside
  the frozen embedding matrix (:class:`NewTokenEmbedding`), so no other row can move and the
  optimizer holds state for k rows only.
- Custom Diffusion (Kumari et al. 2023): the cross-attention key/value projections
  (``attn2.to_k``, ``attn2.to_v``) learn together with one new token per concept, jointly on all
  concepts, with optional regularisation images; only the changed weights are saved.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hw2cli.data import IMAGE_SUFFIXES
from hw2cli.errors import RunError, UsageError
from hw2cli.io.atomic import input_holding, remove_stale_temporaries, save_safetensors, write_json
from hw2cli.io.locks import claim
from hw2cli.runtime import DTYPES, torch_dtype
from hw2cli.tasks.personalize.concepts import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    add_tokens,
    check_concept_tokens,
    kv_parameters,
    parse_concept,
    save_embeddings,
)
from hw2cli.tasks.training import (
    STATE_MARK,
    capture_rng,
    check_run_folder,
    deferred_interrupts,
    interrupted_twice,
    load_state_folder,
    release,
    restore_rng,
    resume_state,
    save_state,
    state_folders,
    stop_here,
)


@dataclass
class PersonalizeOptions:
    model: str
    concepts: list[str]
    out: str
    method: str = "textual-inversion"  # or "custom-diffusion"
    steps: int = 2000  # the command's default: 2,000 per concept
    lr: float = 5e-3
    kv_lr: float = 1e-5
    batch: int = 1
    resolution: int = 512
    seed: int = 0
    checkpoint_every: int = 500
    gradient_checkpointing: bool | None = None  # default: on for CUDA
    mixed_precision: str | None = None  # default: bf16 on CUDA, none elsewhere
    reg: str | None = None  # custom diffusion: "folder:class prompt"
    prior_weight: float = 1.0

    def validate(self) -> None:
        if self.method not in ("textual-inversion", "custom-diffusion"):
            raise UsageError(
                f"{{opt:method}} {self.method!r} is not known; expected textual-inversion or custom-diffusion."
            )
        if self.steps < 1 or self.batch < 1:
            raise UsageError(f"{{opt:steps}} and {{opt:batch}} must be at least 1 (got {self.steps}, {self.batch}).")
        if self.lr <= 0:
            raise UsageError(f"{{opt:lr}} must be positive, got {self.lr}.")
        if self.resolution < 8 or self.resolution % 8:
            raise UsageError(f"{{opt:resolution}} must be a positive multiple of 8, got {self.resolution}.")
        if not self.concepts:
            raise UsageError("give at least one {opt:concept} '<new1>=path/to/images:dog'.")


@dataclass
class PersonalizeResult:
    step: int
    loss: float
    out: Path
    tokens: list[str]
    rows: torch.Tensor | None = None  # the learned embedding rows, [len(tokens), dim]
    seen: list[int] = field(default_factory=list)  # dataset indices this process trained on, in order
    first: int = 0  # the step it started from (a resume's saved step)


def _image_tensors(paths: Sequence[Path], resolution: int, what: str) -> list[torch.Tensor]:
    """Each image centre-cropped to a square and resized to ``resolution``², in [−1, 1]; images far
    smaller than that (a thumbnail, a 1×1 placeholder) are named once: enlarged, they teach a blur."""
    from PIL import Image

    tensors, small = [], []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                side = min(w, h)
                im = im.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
                im = im.resize((resolution, resolution), Image.BICUBIC)
                array = np.asarray(im, dtype="float32") / 127.5 - 1.0
        except Exception as exc:
            raise UsageError(f"cannot open {path} as an image: {exc}.") from exc
        if side < resolution // 4:
            small.append(f"{path} ({w}×{h})")
        tensors.append(torch.from_numpy(array).permute(2, 0, 1))
    if small:
        import warnings

        more = f" and {len(small) - 1} more" if len(small) > 1 else ""
        warnings.warn(
            f"the {what} image {small[0]}{more} is under a quarter of the training resolution "
            f"({resolution}²) on its short side; it is enlarged, so the token learns a blur. Give larger images.",
            stacklevel=2,
        )
    return tensors


class NewTokenEmbedding(torch.nn.Module):
    """The text encoder's token embedding with the new tokens' rows held apart: the original matrix
    stays frozen (so no other row can move, by construction) and ``rows`` (``[k, dim]``, the only
    embedding parameter that learns) serves ids ``first_new ... first_new + k − 1``."""

    def __init__(self, base: torch.nn.Embedding, first_new: int, rows: torch.nn.Parameter) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.first_new = first_new
        self.rows = rows

    @property
    def weight(self) -> torch.Tensor:  # what get_input_embeddings().weight readers expect
        return torch.cat([self.base.weight[: self.first_new], self.rows.to(self.base.weight.dtype)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        new = ids >= self.first_new
        out = self.base(ids.clamp(max=self.first_new - 1))
        picked = self.rows[(ids - self.first_new).clamp(min=0, max=self.rows.shape[0] - 1)].to(out.dtype)
        return torch.where(new[..., None], picked, out)


class LearnedParameters(torch.nn.Module):
    """Everything personalization trains, as one module for ``accelerator.prepare``: the new token
    rows and (Custom Diffusion) the very K/V parameters of the UNet. Calling it under DDP is what
    makes their gradients all-reduce across processes; its state is small (no frozen weights)."""

    def __init__(self, rows: torch.nn.Parameter, kv: dict[str, torch.nn.Parameter]) -> None:
        super().__init__()
        self.rows = rows
        self.kv = torch.nn.ParameterDict({name.replace(".", "__"): p for name, p in kv.items()})

    def forward(self) -> torch.Tensor:
        return self.rows


class ConceptImages(torch.utils.data.Dataset):
    """Every concept's images (and the regularisation set), resized once: items ``(pixels, index)``."""

    def __init__(self, images: list[torch.Tensor]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], index


def _published_step(out: Path) -> int | None:
    try:
        return int(json.loads((out / "config.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_recipe(
    opts: PersonalizeOptions, concepts: list[Any], precision: str, reg_images: list[Path], reg_prompt: str
) -> dict[str, Any]:
    """Everything that decides what a run learns, by content where it is files (the model, every
    concept's images): saved with each state, so a resume can refuse to mix two recipes. Not in it:
    ``steps`` (a resume may extend a run), ``checkpoint_every`` and where the files lie."""
    from hw2cli.tasks.personalize.concepts import file_digests, model_identity

    recipe: dict[str, Any] = {
        "model": model_identity(opts.model, skip_hidden=True),
        "method": opts.method,
        "lr": opts.lr,
        "batch": opts.batch,
        "resolution": opts.resolution,
        "seed": opts.seed,
        "precision": precision,
        "concepts": [
            {"token": c.token, "init": c.init, "kind": c.kind, "images": file_digests(c.images)} for c in concepts
        ],
    }
    if opts.method == "custom-diffusion":
        recipe.update(kv_lr=opts.kv_lr, prior_weight=opts.prior_weight,
                      reg={"prompt": reg_prompt, "images": file_digests(reg_images, "regularisation image")}
                      if opts.reg else None)  # fmt: skip
    return recipe


def recipe_differences(saved: dict[str, Any], now: dict[str, Any], began: dict[str, Any]) -> list[str]:
    """What differs between the recipe a run ``began`` with (``saved``) and this command's (``now``),
    one phrase each, naming the options."""
    found = []
    if saved.get("model") != now.get("model"):
        found.append(f"{{opt:model}} is not the model it began with ({began.get('model')})")
    for key in ("method", "lr", "kv_lr", "prior_weight", "batch", "resolution", "seed"):
        if key in saved and saved.get(key) != now.get(key):
            found.append(f"{{opt:{key}}} {saved[key]} (this command: {now.get(key)})")
    was, is_ = saved.get("concepts", []), now.get("concepts", [])
    if [c["token"] for c in was] != [c["token"] for c in is_]:
        found.append(
            f"the {{opt:concept}} tokens {', '.join(c['token'] for c in was)} in this order (this command: "
            f"{', '.join(c['token'] for c in is_)})"
        )
    else:
        for a, b in zip(was, is_, strict=True):
            if (a["init"], a["kind"]) != (b["init"], b["kind"]):
                found.append(f"{a['token']} starting as {a['init']!r}, {_a(a['kind'])} (this command: "
                             f"{b['init']!r}, {_a(b['kind'])})")  # fmt: skip
            if a["images"] != b["images"]:
                found.append(f"other images for {a['token']} (this command's {len(b['images'])} are not the "
                             f"{len(a['images'])} it began with)")  # fmt: skip
    if "reg" in saved and saved.get("reg") != now.get("reg"):
        found.append(f"{{opt:reg}} {began.get('reg')!r} with other images or prompt")
    return found


def parse_reg(reg: str) -> tuple[Path, str]:
    """Custom Diffusion's ``--reg 'folder:class prompt'`` as (folder, prompt)."""
    folder, _, prompt = reg.partition(":")
    if not folder or not prompt or not Path(folder).is_dir():
        raise UsageError(f"the regularisation set {reg!r} must be 'folder:class prompt' with an existing folder.")
    return Path(folder), prompt


def check_out_apart(out: Path, *, model: str | Path, concepts: list[Any], reg_folder: Path | None = None) -> None:
    """The run folder (and each token folder in it) is none of the folders the run reads: not the
    model's folder, a concept's images or the regularisation images, nor inside one."""
    from hw2cli.tasks.personalize.concepts import slug

    inputs = [(Path(model), "the {opt:model} folder")] if Path(model).is_dir() else []
    inputs += [(c.folder, f"the image folder of {c.token}") for c in concepts]
    if reg_folder is not None:
        inputs.append((reg_folder, "the {opt:reg} folder"))
    held = input_holding(out, inputs)
    if held is not None:
        raise UsageError(f"{{opt:out}} {out} {held}; choose another run folder.")
    for c in concepts:
        written = out / slug(c.token)
        held = input_holding(written, inputs)
        if held is not None:
            raise UsageError(f"{{opt:out}} {out} would keep {c.token} in {written}, which {held}; choose another run "
                             "folder.")  # fmt: skip


def _a(kind: str) -> str:
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def train_personalization(
    opts: PersonalizeOptions,
    *,
    device: torch.device,
    cache: Path,
    offline: bool = False,
    resume: bool = False,
    note: Callable[[str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> PersonalizeResult:
    """Textual inversion or Custom Diffusion on the given concepts; see the module docstring.

    Runs through ``accelerate``: the image loader is prepared (each process gets its own shard of
    every batch), each process draws its noise from its own seed (``seed + process index``), and
    the trained parameters' gradients are all-reduced, so N GPUs train one model on N× the images.
    Resume state is ``accelerator.save_state`` (trained parameters, optimizer, loader, RNG) plus
    ``hw2_state.json`` (step and hw2's own random state), written to a staging folder and renamed
    to ``state-NNNNNNN`` when complete.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from diffusers import DDPMScheduler

    from hw2cli.pretrained.sd import load_pipeline

    opts.validate()
    concepts = [parse_concept(c) for c in opts.concepts]
    check_concept_tokens([c.token for c in concepts])
    reg_images: list[Path] = []
    reg_prompt = ""
    reg_folder = None
    if opts.reg:
        reg_folder, reg_prompt = parse_reg(opts.reg)
        reg_images = [p for p in sorted(reg_folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    out = Path(opts.out)
    check_out_apart(out, model=opts.model, concepts=concepts, reg_folder=reg_folder)
    claim(out, "run folder")  # a second trainer is refused before it reads or writes the run
    remove_stale_temporaries(out)
    saved_states = state_folders(out)
    check_run_folder(out, bool(saved_states), resume)
    state_dir: Path | None = None
    mark: dict[str, Any] = {}
    cuda = device.type == "cuda"
    mixed = opts.mixed_precision or ("bf16" if cuda and torch.cuda.is_bf16_supported() else "no")
    recipe = run_recipe(opts, concepts, mixed, reg_images, reg_prompt)
    if resume:  # read and check the state before the model loads: a bad file fails in a second
        state_dir, mark = resume_state(out, note)
        saved = mark.get("recipe")
        if not isinstance(saved, dict):
            if note is not None:
                note(f"{state_dir} was saved by an hw2 that did not record its settings; they are not checked.")
        else:
            differences = recipe_differences(saved, recipe, mark.get("options") or {})
            if differences:
                raise UsageError(
                    f"{out} was started with other settings: {'; '.join(differences)}. Resume it with the "
                    "settings it began with, or start a new run in another {opt:out}."
                )
            if saved.get("precision") != mixed:  # the precision follows the device: keep the run's own
                mixed = recipe["precision"] = str(saved.get("precision"))
                if note is not None:
                    note(f"continuing in the precision the run began with ({mixed}).")
    accelerator = Accelerator(
        mixed_precision=mixed,
        cpu=not cuda,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=opts.seed),
    )
    pipe = load_pipeline(opts.model, device=accelerator.device, cache=cache, offline=offline, note=note)
    tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    new_ids = add_tokens(pipe, concepts)
    tokens = [c.token for c in concepts]
    if new_ids != list(range(new_ids[0], new_ids[0] + len(new_ids))) or new_ids[-1] != len(tokenizer) - 1:
        raise RunError(f"the new tokens got ids {new_ids}; hw2 expects them appended at the end of the vocabulary.")

    # 1. what learns: the new rows (apart from the frozen matrix) and, for Custom Diffusion, K/V
    for module in (vae, unet, text_encoder):
        module.requires_grad_(False)
    base = text_encoder.get_input_embeddings()
    rows = torch.nn.Parameter(base.weight[new_ids].detach().clone().float())
    text_encoder.set_input_embeddings(NewTokenEmbedding(base, new_ids[0], rows))
    kv: dict[str, torch.nn.Parameter] = {}
    if opts.method == "custom-diffusion":
        kv = kv_parameters(unet)
        if not kv:
            raise RunError("this UNet has no cross-attention K/V projections (attn2.to_k/to_v) to train.")
        for p in kv.values():
            p.requires_grad_(True)
    learned = LearnedParameters(rows, kv)
    groups: list[dict[str, Any]] = [{"params": [rows], "lr": opts.lr}]
    if kv:
        groups.append({"params": list(kv.values()), "lr": opts.kv_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2 if opts.method == "textual-inversion" else 0.0)

    gradient_checkpointing = cuda if opts.gradient_checkpointing is None else opts.gradient_checkpointing
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        text_encoder.gradient_checkpointing_enable()
    weight_dtype = torch_dtype(mixed) if mixed in DTYPES else torch.float32  # accelerate's "no" is fp32
    if weight_dtype != torch.float32:
        vae.to(dtype=weight_dtype)
        if not kv:
            unet.to(dtype=weight_dtype)
    text_encoder.train()
    unet.train() if kv else unet.eval()

    # 2. data: every concept's images, resized once, sharded across processes by the prepared loader
    samples = [(c, p) for c in concepts for p in c.images]
    dataset = ConceptImages(_image_tensors([p for _, p in samples], opts.resolution, "concept"))
    # the loader's own generator: each new iterator draws a seed from it, which a resume mid-epoch
    # (one more iterator) would otherwise take from the global generator saved in the state; the
    # order itself comes from accelerate's seedable sampler, reseeded every epoch
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=opts.batch, shuffle=True, drop_last=False, generator=torch.Generator()
    )
    reg = _image_tensors(reg_images, opts.resolution, "regularisation")
    learned, optimizer, loader = accelerator.prepare(learned, optimizer, loader)

    step = 0
    rank_seed = opts.seed * 1000 + accelerator.process_index  # every process draws its own noise
    rng = random.Random(rank_seed)
    gen = torch.Generator().manual_seed(rank_seed)
    # the global generators too (dropout, anything a library draws; numpy takes < 2**32), saved with the state
    set_seed(rank_seed % 2**32)
    if state_dir is not None:
        process = load_state_folder(accelerator, state_dir, mark)
        step = int(mark["step"])
        restore_rng(process["rng"], gen, rng, source=state_dir / STATE_MARK)

    # a tokenizer built without a config reports an "infinite" model_max_length
    max_length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)

    def encode(prompts: list[str]) -> torch.Tensor:
        ids = tokenizer(
            prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(accelerator.device)
        return text_encoder(ids)[0]

    def denoising_loss(pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = pixels.to(accelerator.device, dtype=weight_dtype)
        latents = vae.encode(pixels).latent_dist.sample(generator=gen) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(latents.device, latents.dtype)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
        t = t.to(latents.device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        with accelerator.autocast():
            pred = unet(noisy, t, encode(prompts).to(unet.dtype)).sample
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())

    def publish(step_done: int) -> None:
        """What ``generate`` reads: the embeddings (and K/V), then config.json with their step."""
        save_embeddings(rows, tokens, out)
        if kv:
            save_safetensors({f"unet.{k}": v.detach() for k, v in kv.items()}, out / "custom_diffusion.safetensors")
        write_json(out / "config.json", {**asdict(opts), "tokens": tokens, "step": step_done})

    def save(step_done: int) -> None:
        # the resume state first, then the outputs: a kill between the two leaves a state one save
        # ahead of the outputs, which the resume rewrites (never the reverse)
        began = {k: v for k, v in asdict(opts).items() if k not in ("steps", "out", "checkpoint_every")}
        save_state(accelerator, out, step_done, {"rng": capture_rng(gen, rng)}, {"recipe": recipe, "options": began})
        if accelerator.is_main_process:
            publish(step_done)
        accelerator.wait_for_everyone()

    if state_dir is not None and accelerator.is_main_process and _published_step(out) != step:
        publish(step)

    if on_start is not None:
        on_start(step, opts.steps)
    first = step
    last = float("nan")
    steps_per_epoch = len(loader)
    seen: list[int] = []
    with deferred_interrupts() as stop:
        try:
            while step < opts.steps:
                epoch, within = divmod(step, steps_per_epoch)
                loader.set_epoch(epoch)
                batches = accelerator.skip_first_batches(loader, within) if within else loader
                for pixels, index in batches:
                    # 3. a batch of (image, prompt from its concept's templates), each process its own shard
                    chosen = [samples[i][0] for i in index.tolist()]
                    seen.extend(index.tolist())
                    prompts = [
                        rng.choice(STYLE_TEMPLATES if c.kind == "style" else OBJECT_TEMPLATES).format(c.token)
                        for c in chosen
                    ]
                    flips = [rng.random() < 0.5 for _ in chosen]
                    pixels = torch.stack([img.flip(-1) if f else img for img, f in zip(pixels, flips, strict=True)])
                    learned()  # under DDP: the forward that arms the all-reduce of rows and K/V gradients
                    loss = denoising_loss(pixels, prompts)
                    if reg:
                        loss = loss + opts.prior_weight * denoising_loss(
                            reg[rng.randrange(len(reg))][None], [reg_prompt]
                        )
                    accelerator.backward(loss)
                    if kv:
                        accelerator.clip_grad_norm_(list(kv.values()), 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    last = loss.item()
                    if on_step is not None and accelerator.is_main_process:
                        on_step(step, {"loss": last})
                    saved_now = step % opts.checkpoint_every == 0 or step == opts.steps
                    if saved_now:
                        save(step)
                    # 4. a Ctrl-C or SIGTERM during the step: it is complete; save and stop
                    requested = bool(stop)
                    if accelerator.num_processes > 1:
                        requested = bool(accelerator.reduce(torch.tensor(float(requested)), "sum").item())
                    stop_here(requested, stop, step, opts.steps, saved_now, save, out)
                    if step >= opts.steps:
                        break
        except KeyboardInterrupt:  # a second Ctrl-C: stop now; the last checkpoint stays consistent
            raise interrupted_twice(out) from None
        finally:
            release(accelerator)
    return PersonalizeResult(step, last, out, tokens, rows=rows.detach().cpu().clone(), seen=seen, first=first)
