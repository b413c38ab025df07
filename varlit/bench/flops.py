"""Analytic FLOP counts of the transformer's passes (`forward_flops`, `pass_flops`, `train_step_flops`).

Matmul FLOPs only (2 per multiply-add; norms, activations, softmax and RoPE are left out). Per sample, with
C width, F FFN hidden, D depth, L tokens, T text tokens, Ct text channels, d bits (V = 2d logits) and
A = sum over scales s of l_s * (tokens up to and including scale s) (the query-key pairs the block-causal
mask allows):

    per block   SA qkv+proj 8C^2 L,  SA attention 4CA,  CA q+proj 4C^2 L,  CA k/v 4C^2 T,
                CA attention 4CTL,   FFN 4CFL
    once        text MLP T(2 Ct C + 2C^2),  text pool 4 Ct C T + 4CT + 2C^2,  AdaLN 12C^2 + 4C^2,
                word_embed 2dC(L-1),  head 2CVL

The backward pass of a linear costs one forward for the input gradient (when anything below needs it)
and one for the weight gradient (when the weight trains); attention costs twice its forward when a
gradient passes through it. Full-block checkpointing adds one more forward of every block the backward
reaches (less the text keys/values, computed once outside the blocks). A fine-tune step is an instance
pass plus a prior pass (forward + backward each) and, for the `online` prior source, one teacher forward
(KV-cached sampling at cfg 1 costs the same matmuls as a teacher-forced forward). The linear-layer part
of these counts equals torch's FlopCounterMode exactly (tests/test_bench.py). MFU = step FLOPs /
(step time x peak), reported on GPU. Attention is counted over the block-causal pairs, which is what the
per-scale attention computes (a single masked kernel, varlit's choice for short CPU sequences, computes
all L^2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..models.infinity import Infinity, InfinityConfig
from ..models.schedules import num_tokens, scale_token_offsets

PRIOR_SOURCES = ("online", "bank")


def attention_pairs(schedule: Sequence[tuple[int, int]]) -> int:
    """Query-key pairs under the block-causal mask: each token sees its own and all earlier scales."""
    offsets = scale_token_offsets(schedule)
    return sum((offsets[s + 1] - offsets[s]) * offsets[s + 1] for s in range(len(schedule)))


@dataclass(frozen=True)
class _Costs:
    """Forward matmul FLOPs of one sample, split the way the backward rules need them."""

    sa_in: float  # qkv projection
    sa_out: float  # output projection
    sa_att: float
    ca_in: float  # query projection
    ca_out: float
    ca_kv: float  # keys/values from the text
    ca_att: float
    ffn_in: float
    ffn_out: float
    text: float  # text MLP, text-pool keys/values and projection, shared AdaLN, head AdaLN
    pool_att: float  # the text pool's one learned query per head
    embed: float  # word_embed
    head: float

    @property
    def block(self) -> float:
        sa = self.sa_in + self.sa_out + self.sa_att
        return sa + self.ca_in + self.ca_out + self.ca_kv + self.ca_att + self.ffn_in + self.ffn_out

    @property
    def once(self) -> float:
        return self.text + self.pool_att + self.embed + self.head


def _costs(
    cfg: InfinityConfig, schedule: Sequence[tuple[int, int]], text_len: int, attention: bool = True
) -> _Costs:
    C, F, Ct, T, V = cfg.width, cfg.ffn_hidden, cfg.text_channels, text_len, cfg.vocab
    L, A = num_tokens(schedule), attention_pairs(schedule)
    att = 1 if attention else 0
    return _Costs(
        sa_in=6 * C * C * L,
        sa_out=2 * C * C * L,
        sa_att=att * 4 * C * A,
        ca_in=2 * C * C * L,
        ca_out=2 * C * C * L,
        ca_kv=4 * C * C * T,
        ca_att=att * 4 * C * T * L,
        ffn_in=2 * C * F * L,
        ffn_out=2 * C * F * L,
        text=T * (2 * Ct * C + 2 * C * C) + 4 * Ct * C * T + 2 * C * C + 12 * C * C + 4 * C * C,
        pool_att=att * 4 * C * T,
        embed=2 * cfg.bits * C * (L - 1),
        head=2 * C * V * L,
    )


def forward_flops(
    cfg: InfinityConfig,
    schedule: Sequence[tuple[int, int]],
    text_len: int,
    rows: int,
    attention: bool = True,
) -> float:
    """One teacher-forced forward (or one KV-cached sampling pass) over `rows` sequences.

    `attention=False` leaves out the attention score/value products (only the linear layers remain).
    """
    c = _costs(cfg, schedule, text_len, attention)
    return rows * (cfg.depth * c.block + c.once)


@dataclass
class TrainableLayout:
    """What trains: per-block kinds (`sa`, `ca`, `ffn`), global kinds (`embed`, `head`, `ada`), and whether
    the text features carry a gradient (a learned subject embedding spliced into the prompt)."""

    block_kinds: list[frozenset[str]]
    global_kinds: frozenset[str] = frozenset()
    text_grad: bool = True

    @classmethod
    def uniform(
        cls, depth: int, kinds: Sequence[str] = ("ca", "ffn"), text_grad: bool = True
    ) -> TrainableLayout:
        block = frozenset(k for k in kinds if k in ("sa", "ca", "ffn"))
        return cls([block] * depth, frozenset(k for k in kinds if k in ("embed", "head", "ada")), text_grad)


@dataclass
class FlopCount:
    forward: float = 0.0
    backward: float = 0.0
    recompute: float = 0.0
    teacher: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.recompute + self.teacher

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(
            self.forward + other.forward,
            self.backward + other.backward,
            self.recompute + other.recompute,
            self.teacher + other.teacher,
        )

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def pass_flops(
    cfg: InfinityConfig,
    schedule: Sequence[tuple[int, int]],
    text_len: int,
    batch: int,
    layout: TrainableLayout,
    checkpointing: bool,
    attention: bool = True,
) -> FlopCount:
    """Forward + backward (+ recomputation) of one teacher-forced training pass over `batch` samples."""
    if len(layout.block_kinds) != cfg.depth:
        raise ValueError(f"layout lists {len(layout.block_kinds)} blocks, the model has {cfg.depth}")
    c = _costs(cfg, schedule, text_len, attention)
    # The start token and the AdaLN condition come from the text, so a text gradient reaches every block.
    flowing = layout.text_grad or bool(layout.global_kinds & {"embed", "ada"})
    bwd = recompute = 0.0
    for kinds in layout.block_kinds:
        reached = flowing or bool(kinds)
        for kind, f_in, f_out, f_att in (
            ("sa", c.sa_in, c.sa_out, c.sa_att),
            ("ca", c.ca_in, c.ca_out, c.ca_att),
            ("ffn", c.ffn_in, c.ffn_out, 0.0),
        ):
            trains = kind in kinds
            if trains:
                bwd += f_in + f_out  # weight gradients
            if trains or flowing:
                bwd += f_out + 2 * f_att + (f_in if flowing else 0.0)  # input gradients
            if kind == "ca":
                bwd += c.ca_kv * (int(trains) + int(layout.text_grad))
            flowing = flowing or trains
        if checkpointing and reached:
            recompute += c.block - c.ca_kv  # text keys/values are computed once, outside the blocks
    bwd += c.head * (int(flowing) + int("head" in layout.global_kinds))
    if "embed" in layout.global_kinds:
        bwd += c.embed + c.text
    if layout.text_grad or "embed" in layout.global_kinds:
        bwd += 2 * c.pool_att
    if layout.text_grad:
        bwd += c.text
    fwd = cfg.depth * c.block + c.once
    return FlopCount(batch * fwd, batch * bwd, batch * recompute)


def train_step_flops(
    cfg: InfinityConfig,
    schedule: Sequence[tuple[int, int]],
    batch: int,
    text_len: int,
    layout: TrainableLayout | None = None,
    checkpointing: bool = False,
    prior_source: str = "bank",
    prior_batch: int | None = None,
    class_text_len: int | None = None,
) -> FlopCount:
    """One fine-tune iteration: instance pass + prior pass (+ teacher sampling when `online`)."""
    if prior_source not in PRIOR_SOURCES:
        raise ValueError(f"prior_source must be one of {PRIOR_SOURCES}, got {prior_source!r}")
    layout = layout or TrainableLayout.uniform(cfg.depth)
    prior_batch = batch if prior_batch is None else prior_batch
    class_text_len = text_len if class_text_len is None else class_text_len
    instance = pass_flops(cfg, schedule, text_len, batch, layout, checkpointing)
    # The class prompt holds no placeholder: no gradient reaches the text in the prior pass.
    prior_layout = TrainableLayout(layout.block_kinds, layout.global_kinds, text_grad=False)
    prior = pass_flops(cfg, schedule, class_text_len, prior_batch, prior_layout, checkpointing)
    total = instance + prior
    if prior_source == "online":
        total.teacher = forward_flops(cfg, schedule, class_text_len, prior_batch)
    return total


def layout_of(model: Infinity, text_grad: bool) -> TrainableLayout:
    """Read the trainable layout off a model's `requires_grad` flags."""
    from ..tuning.freeze import classify

    assignment = classify([n for n, _ in model.named_parameters()], model.cfg.depth, model.block_prefix)
    blocks: list[set[str]] = [set() for _ in range(model.cfg.depth)]
    global_kinds: set[str] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        block, kind = assignment[name]
        if block is None:
            global_kinds.add(kind)
        elif kind in ("sa", "ca", "ffn"):
            blocks[block].add(kind)
    return TrainableLayout(
        [frozenset(b) for b in blocks], frozenset(global_kinds & {"embed", "head", "ada"}), text_grad
    )
