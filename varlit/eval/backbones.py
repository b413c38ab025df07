"""Frozen feature backbones of the subject metrics: DINO ViT-S/16 and CLIP ViT-B/32 (transformers).

Each takes [-1, 1] images (already squashed to the evaluation size, see `preprocess`), applies its own
`ImagePreprocess` and returns float32 features, un-normalised. Each loads from a hub id or a local folder;
with HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set, or for a local folder, nothing is fetched, and a missing
model raises one `BackboneLoadError` that names it. Tests build them from tiny random models directly.
The ids `tiny-dino` and `tiny-clip` build offline random stand-ins instead (`tiny_backbones`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from torch import Tensor, nn

from .preprocess import (
    DINO_REFERENCE,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PIL_RESAMPLE_TO_MODE,
    ImagePreprocess,
    clip_reference,
)
from .tiny_backbones import TINY_CLIP_ID, TINY_DINO_ID, build_tiny_clip, build_tiny_vit

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerBase, ViTModel

DINO_ID = "facebook/dino-vits16"
CLIP_ID = "openai/clip-vit-base-patch32"
PROCESSOR_FILE = "preprocessor_config.json"

T = TypeVar("T")


class BackboneLoadError(RuntimeError):
    """A metric backbone could not be loaded (missing, offline and not cached, or a broken folder)."""


def hub_offline() -> bool:
    """Whether the user asked Hugging Face libraries not to touch the network."""
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def _is_local(id_or_path: str) -> bool:
    """A folder -> True; a hub id -> False; something path-like that is not a folder -> clear error."""
    expanded = os.path.expanduser(id_or_path)
    if os.path.isdir(expanded):
        return True
    if expanded.startswith((os.sep, ".")) or os.path.exists(expanded) or id_or_path.startswith("~"):
        raise BackboneLoadError(f"{id_or_path!r} is not a folder with a saved model (nor a hub id)")
    return False


def load_pretrained(what: str, id_or_path: str, load: Callable[[str, bool], T]) -> T:
    """Call `load(path_or_id, local_files_only)` and turn every loading failure into one clear error."""
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    local = _is_local(id_or_path)
    offline = local or hub_offline()
    source = os.path.expanduser(id_or_path) if local else id_or_path
    try:
        return load(source, offline)
    except (OSError, EntryNotFoundError, HFValidationError) as e:
        where = "the local folder" if local else ("the local cache (offline mode)" if offline else "the hub")
        detail = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        hint = "" if local else f" Download it once with `hf download {id_or_path}` or pass a folder."
        raise BackboneLoadError(f"cannot load the {what} {id_or_path!r} from {where}: {detail}.{hint}") from e


def read_processor_config(id_or_path: str, local_files_only: bool) -> dict[str, Any] | None:
    """The backbone's preprocessor_config.json as a dict; None when a local folder has none."""
    if os.path.isdir(id_or_path):
        path = Path(id_or_path) / PROCESSOR_FILE
        if not path.is_file():
            return None
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(id_or_path, PROCESSOR_FILE, local_files_only=local_files_only))
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BackboneLoadError(f"{path}: not valid JSON ({e})") from e


def _size_field(value: Any, field: str, source: str) -> int | tuple[int, int]:
    """Hugging Face processors store sizes as an int, {"shortest_edge": n} or {"height": h, "width": w}."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and "shortest_edge" in value:
        return int(value["shortest_edge"])
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    raise BackboneLoadError(f"{source}: cannot read field {field!r} = {value!r}")


def _rgb(value: Any, field: str, source: str) -> tuple[float, float, float]:
    if not (isinstance(value, Sequence) and len(value) == 3):
        raise BackboneLoadError(f"{source}: field {field!r} must hold 3 numbers, got {value!r}")
    return float(value[0]), float(value[1]), float(value[2])


def preprocess_from_processor(cfg: dict[str, Any], source: str, int_is_square: bool) -> ImagePreprocess:
    """The resize/crop/mean/std a Hugging Face image processor config describes, as an ImagePreprocess.

    An old-style int "size" means a square for ViT processors and the shorter side for CLIP ones
    (`int_is_square` picks).
    """
    resize = (
        _size_field(cfg["size"], "size", source) if cfg.get("do_resize", True) and "size" in cfg else None
    )
    if int_is_square and isinstance(resize, int):
        resize = (resize, resize)
    crop = None
    if cfg.get("do_center_crop", False) and "crop_size" in cfg:
        c = _size_field(cfg["crop_size"], "crop_size", source)
        crop = (c, c) if isinstance(c, int) else c
    mode = PIL_RESAMPLE_TO_MODE.get(int(cfg.get("resample", 3)), "bicubic")
    if not cfg.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean, std = (
            _rgb(cfg.get("image_mean"), "image_mean", source),
            _rgb(cfg.get("image_std"), "image_std", source),
        )
    return ImagePreprocess(resize=resize, crop=crop, mean=mean, std=std, interpolation=mode)


def _pooled(out: Any) -> Tensor:
    """transformers < 5 returns the projected embeddings, >= 5 an output whose pooler_output holds them."""
    return out if isinstance(out, Tensor) else out.pooler_output


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


class DinoBackbone(nn.Module):
    """DINO features: the CLS token of a transformers ViTModel after its final LayerNorm."""

    def __init__(self, model: ViTModel, preprocess: ImagePreprocess = DINO_REFERENCE):
        super().__init__()
        self.model = _freeze(model)
        self.preprocess = preprocess
        self.num_features = int(model.config.hidden_size)

    @classmethod
    def from_pretrained(
        cls, id_or_path: str = DINO_ID, protocol: Literal["arbooth", "processor"] = "arbooth"
    ) -> DinoBackbone:
        """`protocol="arbooth"` feeds the squashed [-1, 1] image as the reference does; "processor" resizes
        and normalises as the checkpoint's preprocessor_config.json says (ImageNet mean/std for DINO)."""
        if protocol not in ("arbooth", "processor"):
            raise ValueError(f"DinoBackbone: protocol must be 'arbooth' or 'processor', got {protocol!r}")
        if id_or_path == TINY_DINO_ID:  # offline random stand-in (tests, tiny demo); reference preprocessing
            return cls(build_tiny_vit())
        from transformers import ViTModel

        def load(src: str, local_only: bool) -> tuple[ViTModel, dict | None]:
            model = ViTModel.from_pretrained(src, add_pooling_layer=False, local_files_only=local_only)
            proc = read_processor_config(src, local_only) if protocol == "processor" else None
            return model, proc

        model, proc = load_pretrained("DINO backbone", id_or_path, load)
        if protocol == "arbooth":
            return cls(model)
        if proc is None:
            raise BackboneLoadError(
                f"{id_or_path}: protocol='processor' needs a {PROCESSOR_FILE} in the folder"
            )
        return cls(
            model, preprocess_from_processor(proc, f"{id_or_path}/{PROCESSOR_FILE}", int_is_square=True)
        )

    def forward(self, img_B3HW: Tensor) -> Tensor:
        x = self.preprocess(img_B3HW).to(next(self.model.parameters()).dtype)
        out = self.model(pixel_values=x, interpolate_pos_encoding=True)
        return out.last_hidden_state[:, 0].float()


class ClipBackbone(nn.Module):
    """CLIP image and text embeddings (after the projections) of a transformers CLIPModel."""

    def __init__(
        self, model: CLIPModel, tokenizer: PreTrainedTokenizerBase, preprocess: ImagePreprocess | None = None
    ):
        super().__init__()
        self.model = _freeze(model)
        self.tokenizer = tokenizer
        self.preprocess = preprocess or clip_reference(int(model.config.vision_config.image_size))
        self.num_features = int(model.config.projection_dim)
        self.max_text_tokens = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, id_or_path: str = CLIP_ID) -> ClipBackbone:
        """Model, tokenizer and (if present) the processor's resize/crop/mean/std from one hub id or folder."""
        if id_or_path == TINY_CLIP_ID:  # offline random stand-in (tests, tiny demo)
            return cls(*build_tiny_clip())
        from transformers import AutoTokenizer, CLIPModel

        def load(src: str, local_only: bool) -> tuple[CLIPModel, PreTrainedTokenizerBase, dict | None]:
            model = CLIPModel.from_pretrained(src, local_files_only=local_only)
            tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local_only)
            return model, tokenizer, read_processor_config(src, local_only)

        model, tokenizer, proc = load_pretrained("CLIP backbone", id_or_path, load)
        if proc is None:
            size = int(model.config.vision_config.image_size)
            warnings.warn(
                f"{id_or_path}: no {PROCESSOR_FILE}; using the OpenAI CLIP preprocessing at {size} px",
                stacklevel=2,
            )
            return cls(model, tokenizer, clip_reference(size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
        return cls(
            model,
            tokenizer,
            preprocess_from_processor(proc, f"{id_or_path}/{PROCESSOR_FILE}", int_is_square=False),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_images(self, img_B3HW: Tensor) -> Tensor:
        x = self.preprocess(img_B3HW).to(next(self.model.parameters()).dtype)
        return _pooled(self.model.get_image_features(pixel_values=x)).float()

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError(f"encode_text: expected a non-empty list of strings, got {texts!r}")
        tok = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        )
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        return _pooled(self.model.get_text_features(input_ids=ids, attention_mask=mask)).float()

    def forward(self, img_B3HW: Tensor) -> Tensor:
        return self.encode_images(img_B3HW)
