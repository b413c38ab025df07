"""LoRA subject adapters (peft): the freeze mask's block x kind selection decides which linear layers get
a low-rank update; every base weight stays frozen, so the teacher is the same model with LoRA switched off.

peft supplies the layers (`inject_adapter_in_model`), their state dict, disabling and merging; this module
only turns a resolved freeze mask into peft's exact `target_modules` (full module names, so nothing is
matched by accident) and checks what users and adapter files give us. peft is imported lazily: it pulls in
transformers' import machinery (seconds), which full fine-tuning never needs.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..models.loading import CheckpointError
from .freeze import BLOCK_KINDS, KINDS, ResolvedMask, classify

ADAPTER_TYPES = ("full", "lora")
ADAPTER_NAME = "default"  # peft's adapter name inside the modules (one adapter per model)
# peft init_lora_weights values that keep the base weights untouched (pissa, olora, loftq, corda, eva
# rewrite them, which would break the shared teacher and the base fingerprint).
INIT_CHOICES: tuple[bool | str, ...] = (True, False, "gaussian")
# Largest LoRA alpha accepted: far above any useful value (alpha ~ r..4r), far below where alpha/r times a
# trained update overflows float32 (an edited 1e38 would give inf logits in the sampler, not an error).
MAX_ALPHA = 1e6


@dataclass
class AdapterConfig:
    """What a subject adapter trains: `full` (the freeze mask's tensors themselves) or `lora` (peft LoRA on
    the linear layers the freeze mask selects; everything else frozen).

    LoRA settings: `rank`; `alpha` (None: alpha = the module's rank, i.e. scaling 1); `dropout` on the LoRA
    input; `init` (peft's init_lora_weights: true = Kaiming A and zero B, gaussian = Gaussian A and zero B,
    false = random B too, for tests only: the model then differs from the base at step 0); `rank_per_kind`
    overrides the rank per module kind, e.g. {ca: 8, ffn: 16}.
    """

    type: str = "full"
    rank: int = 16
    alpha: float | None = None
    dropout: float = 0.0
    init: bool | str = True
    rank_per_kind: dict[str, int] | None = None


def validate_adapter(cfg: AdapterConfig, where: str = "adapter") -> None:
    """Every LoRA setting checked before any weights load; one line naming the field and value."""
    if cfg.type not in ADAPTER_TYPES:
        raise ValueError(
            f"{where}.type: unknown value {cfg.type!r}; choose one of {', '.join(ADAPTER_TYPES)}"
        )
    if cfg.type != "lora":
        return
    _check_rank(cfg.rank, f"{where}.rank")
    if cfg.alpha is not None and not 0 < cfg.alpha <= MAX_ALPHA:
        raise ValueError(
            f"{where}.alpha must be in (0, {MAX_ALPHA:g}] (or null: alpha = rank), got {cfg.alpha}"
        )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"{where}.dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.init not in INIT_CHOICES or isinstance(cfg.init, int) and not isinstance(cfg.init, bool):
        raise ValueError(
            f"{where}.init: unsupported value {cfg.init!r}; choose true, gaussian or false (peft inits that "
            "rewrite the base weights, e.g. pissa or olora, would change the frozen teacher)"
        )
    for kind, r in (cfg.rank_per_kind or {}).items():
        if kind not in KINDS:
            raise ValueError(
                f"{where}.rank_per_kind: unknown kind {kind!r}; known kinds are {', '.join(KINDS)}"
            )
        _check_rank(r, f"{where}.rank_per_kind.{kind}")


def _check_rank(r: Any, where: str) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{where} must be an integer >= 1, got {r!r}")


@dataclass(frozen=True)
class LoraPlan:
    """The exact LoRA layout: target module names with their rank and alpha (what an adapter file records)."""

    ranks: Mapping[str, int]  # target module name -> rank
    alphas: Mapping[str, float]  # target module name -> alpha
    dropout: float = 0.0
    init: bool | str = True
    kinds: Mapping[str, str] = field(default_factory=dict)  # target -> module kind (for tables)

    @property
    def targets(self) -> list[str]:
        return sorted(self.ranks)

    @property
    def rank(self) -> int:
        """The most common rank (peft's `r`; other ranks go into its rank_pattern)."""
        values = list(self.ranks.values())
        return max(set(values), key=values.count)

    def peft_config(self):
        """peft's LoraConfig: exact target names; per-module ranks/alphas as anchored, escaped patterns."""
        from peft import LoraConfig

        r = self.rank
        alpha = max(set(self.alphas.values()), key=list(self.alphas.values()).count)
        return LoraConfig(
            r=r,
            lora_alpha=alpha,
            target_modules=self.targets,
            lora_dropout=self.dropout,
            init_lora_weights=self.init,
            bias="none",
            rank_pattern={re.escape(t): v for t, v in self.ranks.items() if v != r},
            alpha_pattern={re.escape(t): v for t, v in self.alphas.items() if v != alpha},
        )

    def meta(self, cfg: AdapterConfig | None = None) -> dict[str, Any]:
        """The adapter file's `adapter` entry (JSON)."""
        return {
            "type": "lora",
            "rank": self.rank,
            "alpha": cfg.alpha if cfg is not None else None,
            "rank_per_kind": dict(cfg.rank_per_kind or {}) if cfg is not None else {},
            "dropout": self.dropout,
            "init": self.init,
            "targets": self.targets,
            "ranks": dict(sorted(self.ranks.items())),
            "alphas": dict(sorted(self.alphas.items())),
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], where: str) -> LoraPlan:
        """Rebuild from an adapter file's `adapter` entry; a CheckpointError naming the bad field."""
        ranks, alphas = meta.get("ranks"), meta.get("alphas")
        if (
            not isinstance(ranks, dict)
            or not ranks
            or not isinstance(alphas, dict)
            or set(alphas) != set(ranks)
        ):
            raise CheckpointError(f"{where}: LoRA adapter metadata lacks its per-target ranks and alphas")
        for t, r in ranks.items():
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise CheckpointError(f"{where}: LoRA rank of {t} is {r!r}; ranks must be integers >= 1")
        try:
            alpha_values = {k: float(v) for k, v in alphas.items()}
            dropout = float(meta.get("dropout", 0.0))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: LoRA alphas and dropout must be numbers ({err})") from None
        return cls(dict(ranks), alpha_values, dropout, meta.get("init", True))


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def plan_lora(cfg: AdapterConfig, mask: ResolvedMask, model: nn.Module, where: str = "freeze") -> LoraPlan:
    """LoRA targets = the linear layers whose weight the freeze mask selects, per kind at its rank.

    Every selected kind must own a linear layer (ca_norm, for one, has none): otherwise the spec would
    silently train nothing there."""
    linears = linear_modules(model)
    kinds: dict[str, str] = {}
    for name in linears:
        if f"{name}.weight" in mask.trainable:
            kinds[name] = mask.assignment[f"{name}.weight"][1]
    selected = set(mask.blocks_by_kind) | set(mask.global_kinds)
    # A preset that names kinds without linear layers (every-tensor: norms, embeddings) adapts its linear
    # layers; a kind the user listed in `trainable` must have some.
    strict = not mask.source.startswith("preset:") or not kinds
    for kind in sorted(selected, key=KINDS.index):
        if kind not in kinds.values() and strict:
            blocks = "global" if kind not in BLOCK_KINDS else "blocks " + _blocks(mask, kind)
            raise ValueError(
                f"{where}: kind {kind!r} ({blocks}) matches no linear layer, so LoRA (adapter.type=lora) "
                f"has nothing to adapt there; LoRA kinds are sa, ca, ffn (blocks) and ada, embed, head (global)"
            )
    per_kind = cfg.rank_per_kind or {}
    unused = sorted(set(per_kind) - set(kinds.values()))
    if unused:
        raise ValueError(
            f"adapter.rank_per_kind: kind {unused[0]!r} is not a LoRA target of this freeze spec "
            f"(targets: {', '.join(sorted(set(kinds.values()), key=KINDS.index))})"
        )
    ranks = {n: per_kind.get(k, cfg.rank) for n, k in kinds.items()}
    alphas = {n: float(cfg.alpha) if cfg.alpha is not None else float(r) for n, r in ranks.items()}
    return LoraPlan(ranks, alphas, cfg.dropout, cfg.init, kinds)


def _blocks(mask: ResolvedMask, kind: str) -> str:
    from .freeze import format_blocks

    return format_blocks(mask.blocks_by_kind.get(kind, ())) or "none"


def inject(model: nn.Module, plan: LoraPlan) -> list[str]:
    """Wrap the target linears in peft LoRA layers, in place; returns the LoRA parameter names.

    peft leaves every other parameter's requires_grad to the caller (the module applies its mask)."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(plan.peft_config(), model, adapter_name=ADAPTER_NAME)
    return lora_parameter_names(model)


def lora_parameter_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def lora_mask(mask: ResolvedMask, model: nn.Module, plan: LoraPlan) -> ResolvedMask:
    """The freeze mask as trained under LoRA: the LoRA tensors are trainable, every base tensor frozen."""
    names = [n for n, _ in model.named_parameters()]
    prefix = getattr(model, "block_prefix", None)
    assignment = classify(names, mask.depth, prefix if callable(prefix) else None)
    ranks = sorted(set(plan.ranks.values()))
    label = f"{mask.source}, lora rank {'/'.join(map(str, ranks))}"
    return replace(
        mask, source=label, trainable=frozenset(lora_parameter_names(model)), assignment=assignment
    )


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The base model itself: LoRA off and eval mode (no drop-path or text dropout), restored afterwards.

    This is the teacher under LoRA: the same tensors, no second copy."""
    layers = _tuner_layers(model)
    grad = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    for m in layers:
        m.enable_adapters(False)
    model.eval()
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)
        model.train(was_training)
        for n, p in model.named_parameters():  # peft's enable_adapters touches requires_grad: put it back
            p.requires_grad_(grad[n])


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors under peft's portable names (`<module>.lora_A.weight`: no adapter name)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)


def check_lora_tensors(path: str | os.PathLike, plan: LoraPlan, tensors: Mapping[str, torch.Tensor]) -> None:
    """An adapter file's LoRA tensors must be exactly its targets' A and B at the recorded ranks."""
    want = {f"{t}.lora_{ab}.weight" for t in plan.targets for ab in "AB"}
    missing, unknown = sorted(want - set(tensors)), sorted(set(tensors) - want)
    if missing or unknown:
        what = f"missing {missing[0]}" if missing else f"unknown tensor {unknown[0]}"
        raise CheckpointError(f"{path}: LoRA tensors do not match the adapter's targets ({what})")
    for t in plan.targets:
        r = plan.ranks[t]
        a, b = tensors[f"{t}.lora_A.weight"], tensors[f"{t}.lora_B.weight"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise CheckpointError(
                f"{path}: LoRA tensors of {t} have shapes A {tuple(a.shape)} and B {tuple(b.shape)}, "
                f"but the adapter's config says rank {r}"
            )


def check_fits(
    path: str | os.PathLike, plan: LoraPlan, model: nn.Module, tensors: Mapping[str, torch.Tensor]
) -> None:
    """The targets exist in this base as linear layers of the LoRA tensors' in/out sizes."""
    linears = linear_modules(model)
    for t in plan.targets:
        if t not in linears:
            raise CheckpointError(f"{path}: LoRA target {t} is not a linear layer of this base model")
        lin = linears[t]
        a, b = tensors[f"{t}.lora_A.weight"], tensors[f"{t}.lora_B.weight"]
        if a.shape[1] != lin.in_features or b.shape[0] != lin.out_features:
            raise CheckpointError(
                f"{path}: LoRA tensors of {t} are {b.shape[0]}x{a.shape[1]}, the base layer is "
                f"{lin.out_features}x{lin.in_features}"
            )


def merge_into(model: nn.Module, plan: LoraPlan, tensors: Mapping[str, torch.Tensor]) -> None:
    """Add B A * alpha / r into the target weights with peft (merge, then unload the LoRA layers): the
    model is a plain base model again, with no per-token cost. The caller backs up the weights first."""
    from peft import set_peft_model_state_dict
    from peft.tuners.lora import LoraModel

    tuner = LoraModel(model, plan.peft_config(), ADAPTER_NAME)
    try:
        result = set_peft_model_state_dict(model, dict(tensors), adapter_name=ADAPTER_NAME)
        lost = [k for k in result.unexpected_keys if ".lora_" in k]
        if lost:
            raise CheckpointError(f"LoRA tensors not loaded: {', '.join(lost[:3])}")
        tuner.merge_and_unload(safe_merge=True)
    except BaseException:
        tuner.unload()  # the base as it was: no half-merged or wrapped layer left behind
        raise
    finally:
        if hasattr(model, "peft_config"):
            del model.peft_config  # a plain base model again
