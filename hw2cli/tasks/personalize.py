"""P3b core: personalising Stable Diffusion v1 with new tokens.

- Textual inversion (Gal et al. 2022): new tokens in the tokenizer and text encoder, initialised
  from a word; only their embedding rows learn (every other row is restored bit-exactly after each
  step, since AdamW's weight decay and momentum would otherwise touch them).
- Custom Diffusion (Kumari et al. 2023): the cross-attention key/value projections (``attn2.to_k``,
  ``attn2.to_v``) learn together with one new token per concept, jointly on all concepts, with
  optional regularisation images; only the changed weights are saved.

Training runs through ``accelerate`` (one process, or several under ``accelerate launch``).
Generation writes the graded ``hw2_3.sh`` layout; grading is the P3 rule with CLIP ViT-B/32.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator, model_validator

from hw2cli.data import IMAGE_SUFFIXES
from hw2cli.errors import RunError, UsageError
from hw2cli.io.atomic import (
    confine,
    inside,
    remove_stale_temporaries,
    save_image,
    save_safetensors,
    write_json,
)
from hw2cli.io.manifest import prepare_outputs
from hw2cli.tasks.training import deferred_interrupts, interrupted_twice, stop_here

TOKEN_RE = re.compile(r"<[^<>\s]+>")
STYLE_WORDS = {"painting", "style", "art", "artwork", "drawing", "illustration", "sketch"}

# Prompt templates in the manner of the textual-inversion paper: a few phrasings per kind.
OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a good photo of a {}",
    "a photo of one {}",
    "a photo of the small {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a picture in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "an artwork in the style of {}",
    "a bright painting in the style of {}",
)


# ------------------------------------------------------------------------------------ concepts


@dataclass
class Concept:
    token: str
    folder: Path
    init: str
    kind: str = "object"  # or "style"
    images: list[Path] = field(default_factory=list)


def parse_concept(spec: str) -> Concept:
    """``<new1>=path/to/images:initword[:object|style]`` (kind defaults by the init word)."""
    token, sep, rest = spec.partition("=")
    token = token.strip()
    if not sep or not TOKEN_RE.fullmatch(token):
        raise UsageError(f"--concept {spec!r} must look like '<new1>=path/to/images:dog' (token in angle brackets).")
    parts = rest.rsplit(":", 2)
    kind = None
    if len(parts) == 3 and parts[2] in ("object", "style"):
        folder, init, kind = parts
    elif len(parts) >= 2:
        folder, init = rest.rsplit(":", 1)
    else:
        raise UsageError(f"--concept {spec!r} has no initialiser word; add ':dog' (or another single word).")
    folder_path = Path(folder)
    if not folder_path.is_dir():
        raise UsageError(f"--concept {token}: the image folder {folder_path} does not exist.")
    images = sorted(p for p in folder_path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UsageError(f"--concept {token}: {folder_path} holds no images (.png, .jpg, .webp).")
    init = init.strip()
    if not init:
        raise UsageError(f"--concept {token}: the initialiser word is empty.")
    kind = kind or ("style" if init.lower() in STYLE_WORDS else "object")
    return Concept(token, folder_path, init, kind, images)


# ------------------------------------------------------------------------------------ options


@dataclass
class PersonalizeOptions:
    model: str
    concepts: list[str]
    out: str
    method: str = "textual-inversion"  # or "custom-diffusion"
    steps: int = 3000
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
            raise UsageError(f"--method {self.method!r} is not known; expected textual-inversion or custom-diffusion.")
        if self.steps < 1 or self.batch < 1:
            raise UsageError(f"--steps and --batch must be at least 1 (got {self.steps}, {self.batch}).")
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}.")
        if self.resolution < 8 or self.resolution % 8:
            raise UsageError(f"--resolution must be a positive multiple of 8, got {self.resolution}.")
        if not self.concepts:
            raise UsageError("give at least one --concept '<new1>=path/to/images:dog'.")


@dataclass
class PersonalizeResult:
    step: int
    loss: float
    out: Path
    tokens: list[str]
    rows: torch.Tensor | None = None  # the learned embedding rows, [len(tokens), dim]
    seen: list[int] = field(default_factory=list)  # dataset indices this process trained on, in order


# ------------------------------------------------------------------------------------ tokens


def add_tokens(pipe: Any, concepts: Sequence[Concept]) -> list[int]:
    """Add each concept's token, initialised from its word's embedding; return the new ids."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    init_ids = []
    for c in concepts:
        ids = tokenizer.encode(c.init, add_special_tokens=False)
        if len(ids) != 1:
            raise UsageError(
                f"--concept {c.token}: the initialiser {c.init!r} is {len(ids)} tokens; choose a single-token word."
            )
        init_ids.append(ids[0])
    tokens = [c.token for c in concepts]
    if len(set(tokens)) != len(tokens):
        raise UsageError(f"two concepts use the same token: {', '.join(tokens)}.")
    for token in tokens:
        if token in tokenizer.get_vocab():
            raise UsageError(f"token {token} already exists in the tokenizer; choose another name.")
    tokenizer.add_tokens(tokens)
    new_ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows are set just below
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for new, init in zip(new_ids, init_ids, strict=True):
            weight[new] = weight[init].clone()
    return list(new_ids)


def kv_parameters(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The cross-attention key/value projections (``attn2.to_k``/``attn2.to_v``) Custom Diffusion trains."""
    return {n: p for n, p in unet.named_parameters() if re.search(r"attn2\.to_(k|v)\.", n)}


def save_embeddings(rows: torch.Tensor, tokens: Sequence[str], out: Path) -> list[Path]:
    """One folder per token holding ``learned_embeds.safetensors`` = ``{token: [dim]}``, the diffusers
    format ``pipeline.load_textual_inversion(folder)`` reads; ``rows`` is ``[len(tokens), dim]``."""
    rows = rows.detach().float().cpu()
    paths = []
    for token, row in zip(tokens, rows, strict=True):
        folder = out / slug(token)
        paths.append(save_safetensors({token: row.clone()}, folder / "learned_embeds.safetensors"))
    write_json(out / "embeddings.json", {"tokens": list(tokens), "folders": [slug(t) for t in tokens]})
    return paths


def slug(token: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "", token) or "token"


def load_embeddings(pipe: Any, sources: Sequence[str | Path]) -> list[str]:
    """Load learned tokens: a run folder (``embeddings.json``), a token folder, or a ``.safetensors``
    file with one or more ``{token: tensor}`` entries. Custom Diffusion runs also restore their K/V."""
    from safetensors.torch import load_file

    loaded: list[str] = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise UsageError(f"--embeds {path} does not exist.")
        files: list[Path]
        if path.is_dir() and (path / "embeddings.json").exists():
            meta = json.loads((path / "embeddings.json").read_text())
            files = [path / f / "learned_embeds.safetensors" for f in meta["folders"]]
            kv = path / "custom_diffusion.safetensors"
            if kv.exists():
                state = load_file(kv)
                unet_state = {k.removeprefix("unet."): v for k, v in state.items()}
                missing = set(unet_state) - set(kv_parameters(pipe.unet))
                if missing:
                    raise UsageError(f"{kv} does not fit this UNet: key {sorted(missing)[0]!r} is not part of it.")
                pipe.unet.load_state_dict(unet_state, strict=False)
        elif path.is_dir():
            files = [path / "learned_embeds.safetensors"]
        else:
            files = [path]
        for file in files:
            if not file.exists():
                raise UsageError(f"--embeds: {file} does not exist.")
            try:
                state = load_file(file)
            except Exception as exc:
                raise UsageError(f"cannot read {file} as safetensors embeddings: {exc}.") from exc
            for token, emb in state.items():
                dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
                if emb.reshape(-1).shape[0] != dim:
                    raise UsageError(f"{file}: {token} has {emb.numel()} values but this text encoder needs {dim}.")
                pipe.load_textual_inversion({token: emb.reshape(-1)}, token=token)
                loaded.append(token)
    return loaded


# ------------------------------------------------------------------------------------ training


def _image_tensor(path: Path, resolution: int) -> torch.Tensor:
    from PIL import Image

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
    return torch.from_numpy(array).permute(2, 0, 1)


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


STATE_PREFIX = "state-"
STATE_MARK = "hw2_state.json"


def _state_folders(out: Path) -> list[Path]:
    """Complete saved states, newest first (a state folder is renamed into place once complete)."""
    found = [p for p in out.glob(f"{STATE_PREFIX}*") if p.is_dir() and (p / STATE_MARK).is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _check_state_files(folder: Path) -> None:
    """Read every pickled file of an accelerate state with ``weights_only=True`` first, so a crafted
    one is refused with our sentence (accelerate would print PyTorch's advice, or ignore it)."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    from hw2cli.io.checkpoints import load_error

    for file in sorted(folder.iterdir()):
        if file.suffix in (".bin", ".pkl", ".pt"):
            try:
                with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
                    torch.load(file, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise UsageError(
                    f"{load_error(file, 'a resume state written by hw2', exc)} Delete {folder}, or "
                    "start a new run without --resume."
                ) from None


def _rng_json(rng: random.Random, gen: torch.Generator) -> dict[str, Any]:
    version, state, gauss = rng.getstate()
    return {"python": [version, list(state), gauss], "torch": gen.get_state().tolist()}


def _rng_restore(data: dict[str, Any], rng: random.Random, gen: torch.Generator) -> None:
    version, state, gauss = data["python"]
    rng.setstate((version, tuple(state), gauss))
    gen.set_state(torch.tensor(data["torch"], dtype=torch.uint8))


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
    from accelerate.utils import DataLoaderConfiguration
    from diffusers import DDPMScheduler

    from hw2cli.io.atomic import make_staging_folder
    from hw2cli.pretrained.sd import load_pipeline

    opts.validate()
    concepts = [parse_concept(c) for c in opts.concepts]
    reg_images: list[Path] = []
    reg_prompt = ""
    if opts.reg:
        folder, _, reg_prompt = opts.reg.partition(":")
        if not reg_prompt or not Path(folder).is_dir():
            raise UsageError(
                f"the regularisation set {opts.reg!r} must be 'folder:class prompt' with an existing folder."
            )
        reg_images = [p for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    out = Path(opts.out)
    remove_stale_temporaries(out)
    saved_states = _state_folders(out) if out.is_dir() else []
    if resume and not saved_states:
        raise UsageError(f"{out} holds no saved training state to resume from; drop --resume to start a new run.")
    if not resume and saved_states:
        raise UsageError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out.")
    state_dir = saved_states[0] if resume else None
    hw2_state: dict[str, Any] = {}
    if state_dir is not None:  # read and check the state before the model loads: a bad file fails in a second
        _check_state_files(state_dir)
        try:
            hw2_state = json.loads((state_dir / STATE_MARK).read_text())
            int(hw2_state["step"]), hw2_state["rng"]  # noqa: B018
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{state_dir / STATE_MARK} is not a state hw2 wrote ({exc}).") from None

    cuda = device.type == "cuda"
    mixed = opts.mixed_precision or ("bf16" if cuda and torch.cuda.is_bf16_supported() else "no")
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
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed, torch.float32)
    if weight_dtype != torch.float32:
        vae.to(dtype=weight_dtype)
        if not kv:
            unet.to(dtype=weight_dtype)
    text_encoder.train()
    unet.train() if kv else unet.eval()

    # 2. data: every concept's images, resized once, sharded across processes by the prepared loader
    samples = [(c, p) for c in concepts for p in c.images]
    dataset = ConceptImages([_image_tensor(p, opts.resolution) for _, p in samples])
    loader = torch.utils.data.DataLoader(dataset, batch_size=opts.batch, shuffle=True, drop_last=False)
    reg = [_image_tensor(p, opts.resolution) for p in reg_images]
    learned, optimizer, loader = accelerator.prepare(learned, optimizer, loader)

    step = 0
    rank_seed = opts.seed * 1000 + accelerator.process_index  # every process draws its own noise
    rng = random.Random(rank_seed)
    gen = torch.Generator().manual_seed(rank_seed)
    if state_dir is not None:
        try:
            accelerator.load_state(str(state_dir))
        except Exception as exc:
            raise UsageError(f"{state_dir} does not fit this run ({type(exc).__name__}: {exc}).") from None
        step = int(hw2_state["step"])
        rng_states = hw2_state["rng"]
        if len(rng_states) != accelerator.num_processes:
            raise UsageError(f"{state_dir} was saved by {len(rng_states)} processes; resume it with that many.")
        _rng_restore(rng_states[accelerator.process_index], rng, gen)

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

    def save(step_done: int) -> None:
        from accelerate.utils import gather_object

        out.mkdir(parents=True, exist_ok=True)
        rng_all = gather_object([_rng_json(rng, gen)])  # every process's own random state, in rank order
        staging = make_staging_folder(out / f"{STATE_PREFIX}{step_done:07d}") if accelerator.is_main_process else None
        paths = gather_object([str(staging)]) if accelerator.num_processes > 1 else [str(staging)]
        target = Path(paths[0])
        accelerator.save_state(str(target))
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        save_embeddings(rows, tokens, out)
        if kv:
            save_safetensors({f"unet.{k}": v.detach() for k, v in kv.items()}, out / "custom_diffusion.safetensors")
        write_json(out / "config.json", {**asdict(opts), "tokens": tokens, "step": step_done})
        write_json(target / STATE_MARK, {"step": step_done, "rng": rng_all})
        final = out / f"{STATE_PREFIX}{step_done:07d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(target, final)
        for old in _state_folders(out)[1:]:  # keep only the newest complete state
            shutil.rmtree(old, ignore_errors=True)

    if on_start is not None:
        on_start(step, opts.steps)
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
    return PersonalizeResult(step, last, out, tokens, rows=rows.detach().cpu().clone(), seen=seen)


# ------------------------------------------------------------------------------------ generation


KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SAFE_TOKEN_RE = re.compile(r"^<[^<>\s/\\\x00]+>$")


def check_token_name(token: str, where: str = "token") -> str:
    """A learned token is a name like ``<new1>``: angle brackets, no spaces, no path characters."""
    if not SAFE_TOKEN_RE.fullmatch(token) or ".." in token:
        raise ValueError(
            f"the {where} {token!r} is not a token name like <new1> (angle brackets, no spaces, '/', '\\' or '..')"
        )
    return token


class PromptEntry(BaseModel):
    """One concept of the homework's input.json."""

    model_config = ConfigDict(extra="allow", strict=True)

    src_image: str | None = None
    token_name: str
    prompt: list[str] = Field(min_length=1)
    prompt_4_clip_eval: list[str] | None = None
    baseline: list[tuple[float, float]] | None = None

    @field_validator("token_name")
    @classmethod
    def _token(cls, value: str) -> str:
        return check_token_name(value, "token_name")

    @field_validator("baseline", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:  # JSON integers are baselines too; strict mode wants floats
        if isinstance(value, list):
            return [
                tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in pair)
                if isinstance(pair, list)
                else pair
                for pair in value
            ]
        return value

    @model_validator(mode="after")
    def _lengths(self) -> PromptEntry:
        n = len(self.prompt)
        for name in ("prompt_4_clip_eval", "baseline"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries but prompt has {n}; one per prompt")
        if self.baseline is not None and not all(math.isfinite(v) for pair in self.baseline for v in pair):
            raise ValueError("baseline holds a value that is not a finite number")
        return self


class InputFile(RootModel[dict[str, PromptEntry]]):
    @field_validator("root")
    @classmethod
    def _keys(cls, value: dict[str, PromptEntry]) -> dict[str, PromptEntry]:
        if not value:
            raise ValueError("it maps no concept keys")
        for key in value:
            if not KEY_RE.fullmatch(key):
                raise ValueError(
                    f"the concept key {key!r} is not a name (letters, digits, '_' and '-' only): keys become folder "
                    "names under the output folder"
                )
        return value


def _validation_sentence(path: Path, exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"] if p != "root"]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "list_type":
        message = f"expected a list of strings, got {type(first['input']).__name__} {first['input']!r}"
    elif first["type"] == "string_type":
        message = f"expected a string, got {first['input']!r}"
    elif first["type"] == "missing" and len(loc) >= 2:
        return f"{path}: concept {loc[0]!r} has no {'.'.join(loc[1:])!r}."
    if len(loc) >= 2:
        return f"{path}: concept {loc[0]!r}, field {'.'.join(loc[1:])!r}: {message}."
    if len(loc) == 1:
        return f"{path}: concept {loc[0]!r}: {message}."
    return f"{path}: {message}."


def read_input_json(path: str | Path, *, need_eval: bool = False) -> dict[str, dict[str, Any]]:
    """The homework's input.json, validated once: concept keys are names, token names are tokens,
    ``prompt`` (and ``prompt_4_clip_eval`` / ``baseline``) are lists of one entry per prompt."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist; pass the homework's input.json.")
    try:
        data = InputFile.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise UsageError(f"{path} is not valid JSON: {exc.errors()[0]['ctx'].get('error', '')}.") from None
        raise UsageError(_validation_sentence(path, exc)) from None
    entries = {key: entry.model_dump() for key, entry in data.root.items()}
    if need_eval:
        for key, entry in entries.items():
            for name in ("prompt_4_clip_eval", "baseline"):
                if entry[name] is None:
                    raise UsageError(f"{path}: concept {key!r} has no {name!r}, which grading needs.")
    return entries


def check_prompt_tokens(pipe: Any, prompts: Sequence[str]) -> None:
    vocab = pipe.tokenizer.get_vocab()
    for prompt in prompts:
        for token in TOKEN_RE.findall(prompt):
            if token not in vocab:
                raise UsageError(
                    f"the prompt {prompt!r} names {token}, which no loaded embedding provides; "
                    "pass --embeds with its learned_embeds.safetensors."
                )


def set_sampler(pipe: Any, sampler: str) -> None:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if sampler == "dpm":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    elif sampler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    else:
        raise UsageError(f"--sampler {sampler!r} is not known; expected dpm or ddim.")


def prompt_tokens(prompts: Sequence[str]) -> list[str]:
    """The ``<token>`` names the prompts use, in order of first use."""
    return list(dict.fromkeys(t for p in prompts for t in TOKEN_RE.findall(p)))


def _generator_seed(seed: int, index: int) -> int:
    return seed * 10_007 + index


def iter_images(
    pipe: Any,
    prompt: str,
    n: int,
    *,
    steps: int,
    guidance: float,
    seed: int,
    batch: int,
    resolution: int | None = None,
    skip: Callable[[int, int], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, list[Any]]]:
    """Yield ``(start, PIL images)`` per batch of one prompt; image ``i`` always comes from the
    generator seeded ``(seed, i)`` and batches always cover the same images, so a batch that
    ``skip(start, stop)`` leaves out changes nothing in the others."""
    if not math.isfinite(guidance):
        raise UsageError(f"the guidance scale must be a finite number, got {guidance}.")
    for start in range(0, n, batch):
        count = min(batch, n - start)
        if skip is not None and skip(start, start + count):
            if on_batch is not None:
                on_batch(count)
            continue
        gens = [torch.Generator(pipe.device).manual_seed(_generator_seed(seed, start + i)) for i in range(count)]
        kwargs = {"height": resolution, "width": resolution} if resolution else {}
        result = pipe([prompt] * count, num_inference_steps=steps, guidance_scale=guidance, generator=gens, **kwargs)
        yield start, list(result.images)
        if on_batch is not None:
            on_batch(count)


def generate_images(pipe: Any, prompt: str, n: int, **kwargs: Any) -> list[Any]:
    """``n`` PIL images of one prompt (see :func:`iter_images` for the keyword arguments)."""
    return [image for _, images in iter_images(pipe, prompt, n, **kwargs) for image in images]


def prompt_file_stem(prompt: str) -> str:
    return slug(prompt.replace(" ", "_"))[:60] or "prompt"


def generate_prompt(pipe: Any, prompt: str, n: int, out: Path, **kwargs: Any) -> list[Path]:
    """A free prompt: ``out/<prompt words>_<i>.png`` for ``i`` in ``0..n-1``."""
    stem = prompt_file_stem(prompt)
    paths = []
    with confine(out):
        for start, images in iter_images(pipe, prompt, n, **kwargs):
            paths += [save_image(img, out / f"{stem}_{start + i}.png") for i, img in enumerate(images)]
    return paths


def graded_paths(
    entries: dict[str, dict[str, Any]], out: Path, per_prompt: int = 25
) -> dict[tuple[str, int], list[Path]]:
    """``out/<key>/<idx>/source<key>_prompt<idx>_<n>.png`` for every prompt of every concept."""
    return {
        (key, idx): [inside(out, key, str(idx), f"source{key}_prompt{idx}_{n}.png") for n in range(per_prompt)]
        for key, entry in entries.items()
        for idx in range(len(entry["prompt"]))
    }


def generate_graded(
    pipe: Any,
    entries: dict[str, dict[str, Any]],
    out: Path,
    *,
    per_prompt: int = 25,
    steps: int = 50,
    guidance: float = 7.5,
    seed: int = 0,
    batch: int = 5,
    resolution: int | None = None,
    identity: dict[str, Any] | None = None,
    state_dir: Path | None = None,
    resume: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """The ``hw2_3.sh`` layout: ``out/<key>/<idx>/source<key>_prompt<idx>_<n>.png``, 25 per prompt.

    ``identity`` names the model and embeddings (what the plugin knows of them); with ``resume`` a
    rerun with the same identity and settings keeps finished images and makes only missing
    batches. Returns ``{"written": n, "reused": n}``.
    """
    check_prompt_tokens(pipe, [p for entry in entries.values() for p in entry["prompt"]])
    layout = graded_paths(entries, out, per_prompt)
    for paths in layout.values():
        folder = paths[0].parent
        if folder.is_dir():
            remove_stale_temporaries(folder)
            stray = sorted(p.name for p in folder.iterdir() if p not in set(paths))
            if stray:
                raise UsageError(
                    f"{folder} already holds {stray[0]} (and {len(stray) - 1} more); the grader needs exactly "
                    f"{per_prompt} images there, so use an empty output folder."
                )
    settings = {
        "command": "personalize generate",
        **(identity or {}),
        "prompts": {key: entry["prompt"] for key, entry in entries.items()},
        "per_prompt": per_prompt,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "batch": batch,
        "resolution": resolution,
        "scheduler": type(pipe.scheduler).__name__,
        "device": str(pipe.device.type),
    }
    files = [p for paths in layout.values() for p in paths]
    done = prepare_outputs(out, settings, files, state_dir=state_dir or out.parent, resume=resume)
    written = 0
    with confine(out):
        for (key, idx), paths in layout.items():
            prompt = entries[key]["prompt"][idx]
            for start, images in iter_images(
                pipe,
                prompt,
                per_prompt,
                steps=steps,
                guidance=guidance,
                seed=seed + 1000 * idx + hash_key(key),
                batch=batch,
                resolution=resolution,
                skip=lambda a, b, paths=paths: all(p in done for p in paths[a:b]),
                on_batch=on_batch,
            ):
                for i, image in enumerate(images):
                    save_image(image, paths[start + i])
                    written += 1
    return {"written": written, "reused": len(done)}


def hash_key(key: str) -> int:
    """A stable small integer per concept key (Python's hash() is salted per process)."""
    return sum((i + 1) * ord(ch) for i, ch in enumerate(key)) % 997 * 100_000


# ------------------------------------------------------------------------------------ grading


@dataclass
class PromptScore:
    key: str
    index: int
    prompt: str
    image_score: float
    text_score: float
    baseline: tuple[float, float]

    @property
    def passed(self) -> bool:
        return self.image_score >= self.baseline[0] and self.text_score >= self.baseline[1]


def reference_folder(refs: Path, key: str, entry: dict[str, Any]) -> Path:
    """``refs/<key>``, or ``refs/<src_image>`` (never a folder outside ``refs``)."""
    if not refs.is_dir():
        raise UsageError(f"the reference folder {refs} does not exist; pass hw2_data/textual_inversion.")
    root = refs.resolve()
    for name in (key, str(entry.get("src_image") or "")):
        candidate = refs / name
        if name and candidate.is_dir() and (candidate.resolve() == root or root in candidate.resolve().parents):
            return candidate
    raise UsageError(f"no reference images for concept {key!r} under {refs} (looked for {refs / key}).")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


# The homework's grader runs under transformers 4.19.2, whose CLIPFeatureExtractor for
# openai/clip-vit-base-patch32 does exactly this (HW2_SPEC.md, "The P3 grader exactly").
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESS = ("homework", "model")


def homework_clip_preprocess(image: Any, size: int = CLIP_SIZE) -> torch.Tensor:
    """transformers 4.19's CLIP preprocessing as a float32 ``[3, size, size]`` tensor: RGB; if the
    short side is not ``size``, PIL bicubic to short = ``size``, long = ``int(size·long/short)``;
    centre crop at ``int((side − size + 1)·0.5)``; scale to [0, 1]; normalise with CLIP's mean/std.
    (transformers 5 rounds the resize differently and crops at ``(side − size) // 2``.)"""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short != size:
        new_long = int(size * long / short)
        image = image.resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)
    w, h = image.size
    top, left = int((h - size + 1) * 0.5), int((w - size + 1) * 0.5)
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)
    std = torch.tensor(CLIP_STD, dtype=torch.float32)
    return ((x - mean) / std).permute(2, 0, 1).contiguous()


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as exc:
        raise UsageError(f"{path} is not a readable image ({exc}).") from None


@dataclass
class GradingJob:
    key: str
    index: int
    prompt: str
    eval_prompt: str
    files: list[Path]
    references: list[Path]
    baseline: tuple[float, float]
    ignored: list[Path] = field(default_factory=list)  # non-image files in the reference folder


def grading_plan(
    out: str | Path, entries: dict[str, dict[str, Any]], refs: str | Path, *, per_prompt: int = 25
) -> list[GradingJob]:
    """Every folder the grader reads, checked before any model loads: the references of each
    concept and exactly ``per_prompt`` images per prompt."""
    out, refs = Path(out), Path(refs)
    if not out.is_dir():
        raise UsageError(f"the generated folder {out} does not exist.")
    jobs = []
    for key, entry in entries.items():
        ref_folder = reference_folder(refs, key, entry)
        references = list_images(ref_folder)
        ignored = sorted(p for p in ref_folder.iterdir() if p.is_file() and p not in set(references))
        if not references:
            raise UsageError(f"{ref_folder} holds no reference images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        for idx, prompt in enumerate(entry["prompt_4_clip_eval"]):
            folder = out / key / str(idx)
            files = list_images(folder) if folder.is_dir() else []
            if len(files) != per_prompt:
                raise UsageError(f"{folder} holds {len(files)} images; the grader needs exactly {per_prompt}.")
            baseline = tuple(entry["baseline"][idx])
            jobs.append(GradingJob(key, idx, entry["prompt"][idx], prompt, files, references, baseline, ignored))  # type: ignore[arg-type]
    return jobs


@torch.inference_mode()
def grade(
    out: str | Path,
    input_json: str | Path,
    refs: str | Path,
    clip: Any,
    *,
    per_prompt: int = 25,
    keep: int = 5,
    preprocess: str = "homework",
) -> list[PromptScore]:
    """The P3 rule: image score = mean over references of 100·cos; text score = CLIP's
    ``logits_per_image`` against ``prompt_4_clip_eval``; keep the ``keep`` best of ``per_prompt`` by
    ``image + 2.5·text``; average each score; pass when both reach the baseline.

    ``preprocess``: ``homework`` (the grader's transformers 4.19 arithmetic, the default) or
    ``model`` (the CLIP model's own processor, e.g. transformers 5's)."""
    if preprocess not in PREPROCESS:
        raise UsageError(f"the preprocessing {preprocess!r} is not known; expected homework or model.")

    def encode(paths: list[Path]) -> torch.Tensor:
        images = [_open_rgb(p) for p in paths]
        if preprocess == "homework":
            size = int(getattr(clip, "image_size", None) or CLIP_SIZE)  # 224 for the grader's ViT-B/32
            return clip.encode_images(torch.stack([homework_clip_preprocess(im, size) for im in images]))
        return clip.encode_images(images)

    jobs = grading_plan(out, read_input_json(input_json, need_eval=True), refs, per_prompt=per_prompt)
    scores = []
    ref_cache: dict[tuple[Path, ...], torch.Tensor] = {}
    for job in jobs:
        refs_key = tuple(job.references)
        if refs_key not in ref_cache:
            ref_cache[refs_key] = encode(job.references)
        ref_feats = ref_cache[refs_key]
        feats = encode(job.files)
        text = clip.encode_texts([job.eval_prompt])
        image_score = 100.0 * (feats @ ref_feats.T).mean(dim=1)
        text_score = clip.logit_scale * (feats @ text.T)[:, 0]
        best = torch.topk(image_score + 2.5 * text_score, keep).indices
        scores.append(
            PromptScore(
                job.key,
                job.index,
                job.prompt,
                float(image_score[best].mean()),
                float(text_score[best].mean()),
                job.baseline,
            )
        )
    return scores


def default_embeddings() -> Path | None:
    """The project's own learned embeddings (``hw2cli/assets/embeddings``), if this install has them."""
    from importlib import resources

    folder = Path(str(resources.files("hw2cli.assets").joinpath("embeddings")))
    return folder if (folder / "embeddings.json").exists() else None
