"""Per-block freeze masks: which parameter kinds are trainable in which transformer blocks.

A spec is either a named preset or a list of `{blocks, modules}` entries. It is checked against the
model depth *before* any weights are loaded (`validate`), then resolved against the model's parameter
names (`resolve_mask`) into the exact set of trainable names.

Parameter kinds (names are the official Infinity state-dict names):

- per block: `sa` (`sa.*`: mat_qkv, q/v bias, scale_mul_1H11, proj), `ca` (`ca.*`: mat_q with bias,
  mat_kv, v_bias, proj), `ca_norm` (`ca_norm.*`, the affine LayerNorm in front of CA), `ffn` (`ffn.*`),
  `ada` (`ada_gss`, or `ada_lin.*` in models without shared AdaLN).
- not in any block ("global"): `ada` also owns the shared AdaLN `shared_ada_lin.*` and the head's AdaLN
  `head_nm.*`; `embed` owns `word_embed`, `lvl_embed`, `pos_start`, `text_norm`, `text_proj_for_sos`,
  `text_proj_for_ca`, `cfg_uncond`; `head` owns `head.*`. Global tensors serve every block, so an entry
  that names one of these kinds selects its global tensors whatever its `blocks` say.

The released ARBooth code trains the `ca` and `ffn` sub-modules of every block; `ca_norm` is a sibling
module of `ca` in the official block and stays frozen there, hence its own kind here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from torch import nn

BLOCK_KINDS: tuple[str, ...] = ("sa", "ca", "ca_norm", "ffn", "ada")
GLOBAL_KINDS: tuple[str, ...] = ("ada", "embed", "head")
KINDS: tuple[str, ...] = ("sa", "ca", "ca_norm", "ffn", "ada", "embed", "head")

# Sub-name prefixes inside a block, and top-level prefixes, per kind.
_BLOCK_PREFIXES: dict[str, tuple[str, ...]] = {
    "sa": ("sa",),
    "ca": ("ca",),
    "ca_norm": ("ca_norm",),
    "ffn": ("ffn",),
    "ada": ("ada_gss", "ada_lin"),
}
_GLOBAL_PREFIXES: dict[str, tuple[str, ...]] = {
    "ada": ("shared_ada_lin", "head_nm"),
    "embed": (
        "word_embed",
        "lvl_embed",
        "pos_start",
        "text_norm",
        "text_proj_for_sos",
        "text_proj_for_ca",
        "cfg_uncond",
    ),
    "head": ("head",),
}
_BLOCK_NAME = re.compile(r"^(block_chunks\.\d+\.module\.\d+\.|blocks\.\d+\.)")
_CHUNKED = re.compile(r"^block_chunks\.(\d+)\.module\.(\d+)\.")
_FLAT = re.compile(r"^blocks\.(\d+)\.")

OTHER = "other"


@dataclass
class TrainableSpec:
    """One entry of a freeze spec: these module kinds are trainable in these blocks.

    `modules`: kinds, e.g. [ca, ffn]. `blocks`: "all", a block index 5, an inclusive range "0-15", or a
    comma list "0-15,20".
    """

    modules: list[str]
    blocks: str | int = "all"


@dataclass
class FreezeConfig:
    """What to fine-tune. Give a `preset` or a `trainable` list, not both; neither means "arbooth".

    Presets: arbooth (CA+FFN in every block), all-layers (SA+CA+FFN of every block: the paper's "all
    layers"), every-tensor (every transformer parameter, embeddings, AdaLN and head included), sa, ca, ffn
    (that kind in every block), early-half / late-half (CA+FFN in the first / last floor(depth/2) blocks).
    `subject_embedding` switches the learned placeholder vectors on or off (they live outside the model);
    an empty `trainable` list with the subject embedding on trains the embedding alone.
    """

    preset: str | None = None
    trainable: list[TrainableSpec] | None = None
    subject_embedding: bool = True


def _preset_entries(name: str, depth: int, where: str) -> list[TrainableSpec]:
    half = depth // 2
    if name in ("early-half", "late-half") and half == 0:
        raise ValueError(f"{where}: preset {name!r} selects no block in a model of depth {depth}")
    early = f"0-{half - 1}" if half else ""
    late = f"{depth - half}-{depth - 1}" if half else ""
    table: dict[str, list[TrainableSpec]] = {
        "arbooth": [TrainableSpec(blocks="all", modules=["ca", "ffn"])],
        "all-layers": [TrainableSpec(blocks="all", modules=["sa", "ca", "ffn"])],
        "every-tensor": [TrainableSpec(blocks="all", modules=list(KINDS))],
        "sa": [TrainableSpec(blocks="all", modules=["sa"])],
        "ca": [TrainableSpec(blocks="all", modules=["ca"])],
        "ffn": [TrainableSpec(blocks="all", modules=["ffn"])],
        "early-half": [TrainableSpec(blocks=early, modules=["ca", "ffn"])],
        "late-half": [TrainableSpec(blocks=late, modules=["ca", "ffn"])],
    }
    return table[name]


PRESETS: tuple[str, ...] = (
    "arbooth",
    "all-layers",
    "every-tensor",
    "sa",
    "ca",
    "ffn",
    "early-half",
    "late-half",
)
# Old names that meant something else; asked for, they stop with a pointer to the precise names.
RENAMED_PRESETS: dict[str, str] = {
    "all": "preset 'all' is ambiguous and was split: use all-layers (SA+CA+FFN of every block, the paper's "
    "'all layers') or every-tensor (every transformer parameter)",
}


def parse_blocks(text: str | int, depth: int, where: str = "blocks") -> frozenset[int]:
    """Block indices of a range string; a ValueError naming `where` for anything malformed or out of range."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ValueError(f"{where}: expected a string like 'all', '3', '0-15' or '0-15,20', got {text!r}")
    s = str(text).strip()
    if s.lower() == "all":
        if depth < 1:
            raise ValueError(f"{where}: 'all' selects no block in a model of depth {depth}")
        return frozenset(range(depth))
    if not s:
        raise ValueError(f"{where}: empty block selection; use 'all', '3', '0-15' or '0-15,20'")
    out: set[int] = set()
    for part in s.split(","):
        item = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
        if m is None:
            raise ValueError(
                f"{where}: cannot read {item!r} in {s!r}; use non-negative block indices and inclusive "
                "ranges such as '0-15,20' (or 'all')"
            )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if lo > hi:
            raise ValueError(f"{where}: range {item!r} runs backwards; write it as '{hi}-{lo}'")
        if hi >= depth:
            raise ValueError(
                f"{where}: block {hi} is out of range; the model has blocks 0-{depth - 1} (depth {depth})"
            )
        out.update(range(lo, hi + 1))
    return frozenset(out)


def format_blocks(blocks: Iterable[int]) -> str:
    """Compact range text ("0-3,5") of a set of block indices; "" for none."""
    idx = sorted(set(blocks))
    parts: list[str] = []
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class _Entry:
    where: str
    blocks: frozenset[int]
    kinds: tuple[str, ...]


def _entries(spec: FreezeConfig, depth: int, where: str) -> tuple[str, list[_Entry]]:
    """Check the spec against the depth; returns (source label, entries). Raises ValueError."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"{where}: model depth must be a positive integer, got {depth!r}")
    if spec.preset is not None and spec.trainable is not None:
        raise ValueError(
            f"{where}: set either preset ({spec.preset!r}) or trainable, not both; "
            f"set preset to null to use the trainable list"
        )
    if spec.trainable is None:
        name = "arbooth" if spec.preset is None else spec.preset
        if name in RENAMED_PRESETS:
            raise ValueError(f"{where}.preset: {RENAMED_PRESETS[name]}")
        if name not in PRESETS:
            raise ValueError(f"{where}.preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        raw = _preset_entries(name, depth, f"{where}.preset")
        source, entry_where = f"preset:{name}", f"{where}.preset={name}"
    else:
        if not isinstance(spec.trainable, list | tuple):
            raise ValueError(f"{where}.trainable: expected a list of {{blocks, modules}} entries")
        raw, source, entry_where = list(spec.trainable), "trainable", f"{where}.trainable"
    entries: list[_Entry] = []
    for i, item in enumerate(raw):
        w = f"{entry_where}[{i}]" if source == "trainable" else entry_where
        if isinstance(item, Mapping):
            unknown = set(item) - {"blocks", "modules"}
            if unknown:
                raise ValueError(
                    f"{w}: unknown field(s) {sorted(unknown)}; an entry has 'blocks' and 'modules'"
                )
            if "modules" not in item:
                raise ValueError(f"{w}.modules: missing; name the kinds to train, e.g. [ca, ffn]")
            item = TrainableSpec(**item)
        if not isinstance(item, TrainableSpec):
            raise ValueError(f"{w}: expected {{blocks, modules}}, got {item!r}")
        if isinstance(item.modules, str) or not isinstance(item.modules, list | tuple):
            raise ValueError(f"{w}.modules: expected a list of kinds such as [ca, ffn], got {item.modules!r}")
        if not item.modules:
            raise ValueError(
                f"{w}.modules: empty list selects nothing; name at least one of {', '.join(KINDS)}"
            )
        for kind in item.modules:
            if kind not in KINDS:
                raise ValueError(f"{w}.modules: unknown kind {kind!r}; known kinds are {', '.join(KINDS)}")
        blocks = parse_blocks(item.blocks, depth, where=f"{w}.blocks")
        entries.append(_Entry(w, blocks, tuple(dict.fromkeys(item.modules))))
    if not entries and not spec.subject_embedding:
        raise ValueError(
            f"{where}: nothing to train: the trainable list is empty and subject_embedding is off"
        )
    return source, entries


def validate(spec: FreezeConfig, depth: int, where: str = "freeze") -> None:
    """Fail fast (before loading any weights) on an unknown preset or kind, a bad block, or an empty selection."""
    _entries(spec, depth, where)


def infer_block_prefix(param_names: Iterable[str], depth: int) -> Callable[[int], str]:
    """Block i's name prefix, read from the official naming (`block_chunks.{c}.module.{j}.` or `blocks.{i}.`).

    Stands in for `Infinity.block_prefix` on models that lack it; checks the names hold exactly `depth` blocks.
    """
    chunked: set[tuple[int, int]] = set()
    flat: set[int] = set()
    for n in param_names:
        if m := _CHUNKED.match(n):
            chunked.add((int(m.group(1)), int(m.group(2))))
        elif m := _FLAT.match(n):
            flat.add(int(m.group(1)))
    if chunked and flat:
        raise ValueError("parameter names mix 'block_chunks.*' and 'blocks.*'; cannot tell the block order")
    if chunked:
        per_chunk = max(j for _, j in chunked) + 1
        found = {c * per_chunk + j for c, j in chunked}

        def prefix(i: int) -> str:
            return f"block_chunks.{i // per_chunk}.module.{i % per_chunk}."
    else:
        found = flat

        def prefix(i: int) -> str:
            return f"blocks.{i}."

    if found != set(range(depth)):
        raise ValueError(
            f"the model's parameter names hold {len(found)} blocks ({format_blocks(found) or 'none'}), "
            f"but the freeze spec was checked for depth {depth}"
        )
    return prefix


def classify(
    param_names: Iterable[str], depth: int, block_prefix: Callable[[int], str] | None = None
) -> dict[str, tuple[int | None, str]]:
    """name -> (block index or None for global tensors, kind or 'other')."""
    names = list(param_names)
    prefix_fn = block_prefix or infer_block_prefix(names, depth)
    by_prefix = {prefix_fn(i): i for i in range(depth)}
    out: dict[str, tuple[int | None, str]] = {}
    for n in names:
        m = _BLOCK_NAME.match(n)
        if m is not None:
            if m.group(0) not in by_prefix:
                raise ValueError(f"parameter {n!r} lies in a block outside 0-{depth - 1}")
            rest = n[m.end() :]
            kind = _kind_of(rest, _BLOCK_PREFIXES)
            out[n] = (by_prefix[m.group(0)], kind)
        else:
            out[n] = (None, _kind_of(n, _GLOBAL_PREFIXES))
    return out


def _kind_of(name: str, table: Mapping[str, tuple[str, ...]]) -> str:
    for kind, prefixes in table.items():
        for p in prefixes:
            if name == p or name.startswith(p + "."):
                return kind
    return OTHER


@dataclass(frozen=True)
class ResolvedMask:
    """The exact trainable parameter names, and what selected them (for the table and the hparams)."""

    depth: int
    source: str
    trainable: frozenset[str]
    blocks_by_kind: Mapping[str, frozenset[int]]
    global_kinds: frozenset[str]
    assignment: Mapping[str, tuple[int | None, str]]
    subject_embedding: bool

    def __contains__(self, name: str) -> bool:
        return name in self.trainable

    def counts(self, model: nn.Module) -> dict[tuple[int | None, str], tuple[int, int]]:
        """(block or None, kind) -> (trainable numel, total numel)."""
        out: dict[tuple[int | None, str], tuple[int, int]] = {}
        for name, p in model.named_parameters():
            if name not in self.assignment:
                raise ValueError(f"parameter {name!r} was not part of the names this mask was resolved on")
            key = self.assignment[name]
            t, tot = out.get(key, (0, 0))
            out[key] = (t + (p.numel() if name in self.trainable else 0), tot + p.numel())
        return out

    def table(self, model: nn.Module, subject_params: int = 0) -> str:
        """Block x kind table of trainable parameter counts ('-' = frozen), plus a 'global' row and totals.

        `subject_params` (the learned subject vectors) count in the totals, so the share printed here is
        the one `summary.json` and the sweep tables report."""
        counts = self.counts(model)
        kinds = [k for k in KINDS if any(key[1] == k for key in counts)]
        if any(key[1] == OTHER for key in counts):
            kinds.append(OTHER)
        rows = [[str(i)] + [_cell(counts.get((i, k))) for k in kinds] for i in range(self.depth)]
        rows.append(["global"] + [_cell(counts.get((None, k))) for k in kinds])
        header = ["block", *kinds]
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
        lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [header, *rows]]
        trainable = sum(t for t, _ in counts.values()) + subject_params
        total = sum(tot for _, tot in counts.values()) + subject_params
        pct = 100.0 * trainable / total if total else 0.0
        subject = f"{subject_params:,} subject vectors included" if subject_params else "no subject vectors"
        lines.append(
            f"freeze mask ({self.source}): {trainable:,} of {total:,} parameters trainable ({pct:.2f}%), "
            f"subject embedding {'on' if self.subject_embedding else 'off'} ({subject})"
        )
        return "\n".join(lines)

    def as_hparams(self, prefix: str = "freeze") -> dict[str, str | int | bool]:
        """Flat, loggable description: the source, the blocks of every block kind, the global kinds."""
        out: dict[str, str | int | bool] = {f"{prefix}/source": self.source}
        for kind in BLOCK_KINDS:
            out[f"{prefix}/blocks/{kind}"] = format_blocks(self.blocks_by_kind.get(kind, ())) or "none"
        out[f"{prefix}/global"] = ",".join(sorted(self.global_kinds)) or "none"
        out[f"{prefix}/num_trainable_tensors"] = len(self.trainable)
        out[f"{prefix}/subject_embedding"] = self.subject_embedding
        return out


def _cell(c: tuple[int, int] | None) -> str:
    if c is None:
        return ""
    t, _ = c
    if t == 0:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if t >= div:
            return f"{t / div:.2f}{unit}"
    return str(t)


def resolve_mask(
    spec: FreezeConfig,
    depth: int,
    param_names: Iterable[str],
    block_prefix: Callable[[int], str] | None = None,
    where: str = "freeze",
) -> ResolvedMask:
    """The trainable names of a model for a spec. Each (entry, kind) must match at least one parameter."""
    source, entries = _entries(spec, depth, where)
    names = list(param_names)
    assignment = classify(names, depth, block_prefix)
    blocks_by_kind: dict[str, set[int]] = {}
    global_kinds: set[str] = set()
    trainable: set[str] = set()
    for e in entries:
        for kind in e.kinds:
            hit = {n for n, (blk, k) in assignment.items() if k == kind and (blk is None or blk in e.blocks)}
            if not hit:
                raise ValueError(
                    f"{e.where}: kind {kind!r} in blocks {format_blocks(e.blocks)} matches no parameter of the model"
                )
            trainable |= hit
            if kind in BLOCK_KINDS:
                blocks_by_kind.setdefault(kind, set()).update(e.blocks)
            if any(assignment[n][0] is None for n in hit):
                global_kinds.add(kind)
    return ResolvedMask(
        depth=depth,
        source=source,
        trainable=frozenset(trainable),
        blocks_by_kind={k: frozenset(v) for k, v in blocks_by_kind.items()},
        global_kinds=frozenset(global_kinds),
        assignment=assignment,
        subject_embedding=spec.subject_embedding,
    )


def resolve_for_model(
    spec: FreezeConfig, model: nn.Module, depth: int, where: str = "freeze"
) -> ResolvedMask:
    """`resolve_mask` on a live model, using its `block_prefix(i)` when it has one."""
    prefix = getattr(model, "block_prefix", None)
    names = [n for n, _ in model.named_parameters()]
    return resolve_mask(spec, depth, names, block_prefix=prefix if callable(prefix) else None, where=where)


def apply_mask(model: nn.Module, mask: ResolvedMask) -> int:
    """Set requires_grad from the mask (everything else frozen); returns the trainable parameter count."""
    params = dict(model.named_parameters())
    missing = sorted(mask.trainable - params.keys())
    if missing:
        raise ValueError(f"the mask names parameters the model does not have: {missing[:5]}")
    n = 0
    for name, p in params.items():
        on = name in mask.trainable
        p.requires_grad_(on)
        n += p.numel() if on else 0
    return n
