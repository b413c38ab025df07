"""A ready-to-sample bundle: Infinity + VAE + T5 for a preset, from the hub, local files or random init.

Subject adapters are applied here: `varlit.tuning.adapter` reads and checks the file and hands over plain
data (tensors, LoRA plan, subject vectors); the pipeline puts it on its model and keeps the base values, so
`restore_base` undoes it without reloading anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image

from .models.infinity import Infinity
from .models.loading import load_checkpoint
from .models.presets import Preset, get_preset
from .models.sampler import SampleOutput, SamplingConfig, make_generator, sample, to_uint8
from .models.schedules import Schedule
from .models.text import TextBatch, TextEncoder
from .models.vae import BSQVAE

if TYPE_CHECKING:
    from .tuning.adapter import Adapter
    from .tuning.lora import LoraPlan


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_device(device: str) -> None:
    """Fail at once (before any weights load) when a CUDA device is asked for and none is visible."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r}: torch sees no CUDA GPU (torch.cuda.is_available() is False); use --device cpu"
        )


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' = bf16 on GPU (how the released models run their blocks), float32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def check_bundled(p: Preset, *files: str | None) -> None:
    """A bundled preset's files are part of the package: when one is missing, say how to rebuild it."""
    from pathlib import Path

    from .models.loading import CheckpointError

    for f in files:
        if f is not None and not Path(f).exists():
            raise CheckpointError(
                f"preset {p.name!r}: {f} is missing; it ships with varlit, rebuild it with `make world`"
            )


def load_base(
    p: Preset,
    weights: str | None,
    vae_weights: str | None,
    device: torch.device,
    dtype: torch.dtype,
    init_seed: int = 0,
    random_init: bool | None = None,
    flags: tuple[str, str] = ("--weights", "--vae_weights"),
) -> tuple[Infinity, BSQVAE]:
    """Transformer and VAE of a preset: released/local weights, or seeded random init (tiny, benchmarks).

    `dtype` is the blocks' dtype: as in the official code only the transformer blocks are cast (bf16 on GPU);
    every tensor outside them stays float32 (`Infinity.set_precision`). Real weights are loaded onto a
    meta-device skeleton (no second copy in memory); the VAE stays float32. `flags` name the options that
    set `weights` and `vae_weights` in the calling command (`--model.weights` in `varlit fit`).
    """
    given = {flags[0]: weights, flags[1]: vae_weights}
    weights = weights or p.weights
    vae_weights = vae_weights or p.vae_weights
    random_init = (weights is None) if random_init is None else random_init
    if random_init:
        # Built where it will run, drawn in float32 (the same weights whatever the dtype), then the
        # blocks are cast one tensor at a time. The VAE stays float32 (it runs under autocast).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(init_seed)
            with torch.device(device):
                model = Infinity(p.infinity)
                vae = BSQVAE(p.vae).eval().requires_grad_(False)
        model.set_precision(dtype)
        return model, vae
    if p.bundled:
        from pathlib import Path

        from .models.loading import CheckpointError

        for flag, path in given.items():  # yours: name the flag; the preset's own files: how to rebuild them
            if path is not None and not Path(path).expanduser().exists():
                raise CheckpointError(f"{path} not found (check {flag})")
        check_bundled(p, *(None if given[f] else path for f, path in zip(flags, (weights, vae_weights))))
    model, vae = p.build("meta")
    # In the file's dtype, then blocks to `dtype` and the rest to float32 (one tensor at a time).
    load_checkpoint(model, weights, p.hf_repo, dtype=None, device=device, flag=flags[0], preset=p.name)
    model.set_precision(dtype)
    if vae_weights is None:
        raise ValueError(f"preset {p.name!r} needs {flags[1]} when {flags[0]} is given")
    load_checkpoint(
        vae,
        vae_weights,
        p.hf_repo,
        subkey="vae",
        dtype=torch.float32,
        device=device,
        flag=flags[1],
        preset=p.name,
    )
    return model, vae


@dataclass
class Pipeline:
    preset: Preset
    model: Infinity
    vae: BSQVAE
    text_encoder: TextEncoder
    subject: torch.nn.Module | None = None  # a SubjectEmbedding spliced in at the placeholder token
    placeholder: str | None = None
    base_backup: dict[str, torch.Tensor] = field(default_factory=dict)  # base values under an adapter

    @classmethod
    def load(
        cls,
        preset: str | Preset = "tiny",
        weights: str | None = None,
        vae_weights: str | None = None,
        text_encoder: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        init_seed: int = 0,
        random_init: bool | None = None,
    ) -> Pipeline:
        """Build a preset (a name, or a `Preset` already resolved); real weights come from `weights`/`vae_weights`
        (path or hub file name) or the preset's defaults. `random_init` (default: only for presets without
        released weights) skips loading."""
        p = preset if isinstance(preset, Preset) else get_preset(preset)
        dev = resolve_device(device)
        model, vae = load_base(
            p, weights, vae_weights, dev, resolve_dtype(dtype, dev), init_seed, random_init
        )
        # The released inference code runs T5 in float16 on GPU; float32 on CPU.
        te_dtype = torch.float16 if dev.type == "cuda" else torch.float32
        if p.bundled and text_encoder is None:
            check_bundled(p, p.text_encoder)
        te = TextEncoder.from_pretrained(
            text_encoder or p.text_encoder, dtype=te_dtype, max_length=p.infinity.text_maxlen
        )
        te.to(dev)
        return cls(p, model.eval().requires_grad_(False), vae.eval().requires_grad_(False), te)

    # ---- diffusers' shape: from_pretrained, load_adapter / unload_adapter, pipe(prompt), to(device) ----------

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = "world", device: str = "cpu", dtype: str = "auto", init_seed: int = 0
    ) -> Pipeline:
        """A preset name (`world`, `tiny`, `infinity-2b` ...), or a folder written by `varlit export` / a hub
        repo id of one: then the base model its adapter records, with the adapter applied."""
        from pathlib import Path

        from .models.presets import UnknownPresetError

        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            try:
                get_preset(name_or_path)
                return cls.load(name_or_path, device=device, dtype=dtype, init_seed=init_seed)
            except UnknownPresetError:
                if "/" not in name_or_path:
                    raise
            folder = _hub_folder(name_or_path)
        from .tuning.adapter import read_adapter
        from .tuning.adapter_source import AdapterBase, merge_base

        adapter = read_adapter(adapter_file(folder))
        base = merge_base(adapter.path, {}, recorded=AdapterBase.from_meta(adapter.meta))
        pipe = cls.load(
            base["preset"],
            base["weights"],
            base["vae_weights"],
            base["text_encoder"],
            device=device,
            dtype=dtype,
            init_seed=base["init_seed"],
        )
        pipe.apply_adapter(adapter)
        return pipe

    def load_adapter(self, path: str | os.PathLike) -> Adapter:
        """Apply a subject adapter (a varlit `.safetensors`, or a `varlit export` folder) in place; the base
        values are kept, so `unload_adapter` restores the base exactly. Returns the adapter read."""
        from .tuning.adapter import read_adapter

        return self.apply_adapter(read_adapter(adapter_file(path)))

    def apply_adapter(self, adapter: Adapter) -> Adapter:
        """Put an adapter read by `read_adapter` on this base: tuned tensors in place (full) or merged low-rank
        updates (lora), subject vectors for `<placeholder>`. A refused adapter leaves the plain base."""
        from .tuning.adapter import check_base, check_target, subject_of
        from .tuning.subject_embedding import SubjectEmbedding

        kind = check_target(adapter, self.preset.name)
        if self.base_backup:
            self.restore_base()
        plan = check_base(adapter, self.model, self.preset.infinity.depth)
        if kind == "lora":
            self.base_backup = merge_lora(self.model, plan, adapter.tensors, adapter.path)
        else:
            self.base_backup = apply_adapter_tensors(self.model, adapter.tensors, str(adapter.path))
        vectors, placeholder = subject_of(adapter)
        if vectors is None:
            self.set_subject(None, None)
        else:
            emb = SubjectEmbedding(vectors.shape[0], vectors.shape[1])
            emb.vectors.data.copy_(vectors)
            self.set_subject(emb.to(self.device), placeholder)
        return adapter

    def unload_adapter(self) -> None:
        """Back to the base model (no reload)."""
        self.restore_base()

    def __call__(
        self,
        prompt: str | Sequence[str],
        num_images: int = 1,
        seed: int | None = 0,
        sampling: SamplingConfig | None = None,
        negative_prompt: str | None = None,
        h_div_w: float = 1.0,
        pn: str | None = None,
    ) -> list[Image.Image]:
        """`num_images` PIL images per prompt, drawn together under `seed` (the preset's own sampling
        settings unless `sampling` is given)."""
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = [p for p in prompts for _ in range(num_images)]
        out = self.generate(
            batch, sampling or self.preset.default_sampling(), seed, h_div_w, pn, negative_prompt
        )
        return [Image.fromarray(img.cpu().numpy()) for img in to_uint8(out.images_B3HW)]

    def to(self, device: str | torch.device) -> Pipeline:
        """Move every part (transformer, VAE, T5, subject vectors) to `device`; returns the pipeline."""
        check_device(str(device))
        dev = torch.device(device)
        for part in (self.model, self.vae, self.text_encoder, self.subject):
            if part is not None:
                part.to(dev)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def schedule(self, h_div_w: float = 1.0, pn: str | None = None) -> Schedule:
        return self.preset.schedule(h_div_w, pn)

    def set_subject(self, subject: torch.nn.Module | None, placeholder: str | None) -> None:
        """Use learned subject vectors wherever a prompt holds the placeholder token."""
        self.subject, self.placeholder = subject, placeholder
        if placeholder is not None:
            self.text_encoder.add_token(placeholder)

    def restore_base(self) -> None:
        """Undo an applied adapter (in place, no reload)."""
        with torch.no_grad():
            params = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
            for k, v in self.base_backup.items():
                params[k].copy_(v)
        self.base_backup = {}
        self.set_subject(None, None)

    def encode(self, prompts: Sequence[str]) -> TextBatch:
        text = self.text_encoder.encode(list(prompts))
        if self.subject is not None and self.placeholder is not None:
            from .tuning.subject_embedding import check_placeholders_kept, find_placeholder

            token_id = self.text_encoder.tokenizer.convert_tokens_to_ids(self.placeholder)
            ids = self.text_encoder.tokenize(list(prompts))["input_ids"]
            positions = find_placeholder(ids, token_id, text.lengths_B)
            check_placeholders_kept(list(prompts), positions, self.placeholder, self.text_encoder.max_length)
            text = self.subject.splice_text(text, positions, max_length=self.model.cfg.text_maxlen)
        return text.to(self.device, self.model.io_dtype)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingConfig | None = None,
        seed: int | None = 0,
        h_div_w: float = 1.0,
        pn: str | None = None,
        negative_prompt: str | None = None,
    ) -> SampleOutput:
        """One image per prompt; the same seed and prompt batch always give the same images.

        `negative_prompt`: the unconditional rows of classifier-free guidance use its T5 features instead
        of the learned null text (no effect when cfg is 1)."""
        if not prompts:
            raise ValueError("empty prompt list: give at least one prompt")
        schedule = self.schedule(h_div_w, pn)
        negative = self.encode([negative_prompt]) if negative_prompt else None
        # The model casts its blocks itself; autocast here is for the VAE decoder, as in the official code.
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.model.block_dtype == torch.bfloat16
        ):
            return sample(
                self.model,
                self.vae,
                self.encode(prompts),
                schedule,
                sampling,
                generator=make_generator(seed, self.device),
                patchify=self.preset.patchify,
                negative=negative,
            )


def apply_adapter_tensors(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Copy tuned tensors into the model in place, all or none; returns the previous values (the base's)."""
    from .tuning.adapter import check_fits_base

    check_fits_base(model, tensors, source)
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    previous = {}
    with torch.no_grad():
        for k, v in tensors.items():
            previous[k] = own[k].detach().clone()
            own[k].copy_(v.to(own[k].device, own[k].dtype))
    return previous


def merge_lora(
    model: torch.nn.Module, plan: LoraPlan, tensors: dict[str, torch.Tensor], path
) -> dict[str, torch.Tensor]:
    """Merge a checked LoRA adapter into its target weights (no per-token cost); returns their base values.
    Weights the merge would make non-finite are refused, and the base is left as it was."""
    from .models.loading import CheckpointError
    from .tuning.lora import merge_into

    params = dict(model.named_parameters())
    backup = {f"{t}.weight": params[f"{t}.weight"].detach().clone() for t in plan.targets}
    try:
        merge_into(model, plan, tensors)
    except (ValueError, CheckpointError) as err:  # peft's safe merge refuses non-finite results
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot merge the LoRA adapter ({first})") from None
    merged = {k: params[k] for k in backup}
    bad = [k for k, w in merged.items() if not bool(torch.isfinite(w).all())]
    if bad:
        with torch.no_grad():
            for k, w in merged.items():
                w.copy_(backup[k])
        raise CheckpointError(
            f"{path}: merging the LoRA update gives non-finite weights in {bad[0]} (rank {plan.ranks[bad[0][:-7]]}, "
            f"alpha {plan.alphas[bad[0][:-7]]:g}): the adapter's tensors or alphas are broken"
        )
    return backup


ADAPTER_IN_FOLDER = "varlit_adapter.safetensors"  # the varlit adapter inside a `varlit export` folder


def adapter_file(path: str | os.PathLike) -> str:
    """A varlit adapter file, or the one inside a `varlit export` folder."""
    from pathlib import Path

    p = Path(path).expanduser()
    if p.is_dir():
        inside = p / ADAPTER_IN_FOLDER
        if not inside.is_file():
            raise FileNotFoundError(
                f"{p} holds no {ADAPTER_IN_FOLDER}: not a folder written by `varlit export`"
            )
        return str(inside)
    return str(p)


def _hub_folder(repo_id: str):
    """A hub repo written by `varlit push`, from the cache (offline) or downloaded."""
    from pathlib import Path

    from huggingface_hub import snapshot_download

    from .models.hub import HubUnavailableError, local_only

    try:
        return Path(snapshot_download(repo_id, local_files_only=local_only()))
    except Exception as err:  # the hub raises many types (offline, 404, auth); one line covers them
        raise HubUnavailableError(
            f"cannot get {repo_id!r} from the hub ({type(err).__name__}); download it once with "
            f"`hf download {repo_id}` or pass the folder"
        ) from None


def slugify(text: str, max_len: int = 60) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_")[:max_len] or "prompt"
