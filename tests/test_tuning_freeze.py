"""Freeze-mask specs: parsing, every invalid-spec error, presets on official parameter names, apply/table/hparams."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from tests.helpers import parity_dir
from varlit.tuning.freeze import (
    KINDS,
    PRESETS,
    FreezeConfig,
    TrainableSpec,
    apply_mask,
    format_blocks,
    parse_blocks,
    resolve_for_model,
    resolve_mask,
    validate,
)

# ---- a small module tree with the official Infinity parameter names ------------------------------


class _CA(nn.Module):
    def __init__(self, c: int, kv: int, pool: bool = False):
        super().__init__()
        if pool:
            self.mat_q = nn.Parameter(torch.zeros(1, 1, c))
        else:
            self.mat_q = nn.Linear(c, c)
        self.mat_kv = nn.Linear(kv, 2 * c, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("zero_k_bias", torch.zeros(c))
        self.proj = nn.Linear(c, c)


class _SA(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.mat_qkv = nn.Linear(c, 3 * c, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(c))
        self.v_bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("zero_k_bias", torch.zeros(c))
        self.scale_mul_1H11 = nn.Parameter(torch.zeros(1, 2, 1, 1))
        self.proj = nn.Linear(c, c)


class _FFN(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc1 = nn.Linear(c, 2 * c)
        self.fc2 = nn.Linear(2 * c, c)


class _Block(nn.Module):
    def __init__(self, c: int, kv: int):
        super().__init__()
        self.sa = _SA(c)
        self.ca = _CA(c, kv)
        self.ffn = _FFN(c)
        self.ca_norm = nn.LayerNorm(c)
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, c))


class _Chunk(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


class _Pool(nn.Module):
    def __init__(self, c: int, kv: int):
        super().__init__()
        self.ca = _CA(c, kv, pool=True)


class _HeadNorm(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 2 * c))


class FakeInfinity(nn.Module):
    """Official key layout: block i at block_chunks.{i // n}.module.{i % n} (or blocks.{i} with one chunk)."""

    def __init__(self, depth: int = 4, chunks: int = 2, c: int = 8, kv: int = 6, d: int = 4):
        super().__init__()
        blocks = [_Block(c, kv) for _ in range(depth)]
        if chunks == 1:
            self.blocks = nn.ModuleList(blocks)
        else:
            n = depth // chunks
            self.block_chunks = nn.ModuleList(_Chunk(blocks[i : i + n]) for i in range(0, depth, n))
        self.cfg_uncond = nn.Parameter(torch.zeros(5, kv))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, c))
        self.text_norm = nn.Module()
        self.text_norm.weight = nn.Parameter(torch.ones(kv))
        self.text_proj_for_sos = _Pool(c, kv)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(kv, c), nn.GELU(), nn.Linear(c, c))
        self.lvl_embed = nn.Embedding(15, c)
        self.word_embed = nn.Linear(d, c)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        self.head_nm = _HeadNorm(c)
        self.head = nn.Linear(c, 2 * d)


def _names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def _pick(names: list[str], pattern: str) -> set[str]:
    return {n for n in names if re.match(pattern, n)}


BLOCK = r"block_chunks\.(?:{c})\.module\.(?:{j})\."


# ---- parsing -------------------------------------------------------------------------------------


def test_parse_blocks_accepts_all_ints_ranges_and_lists() -> None:
    assert parse_blocks("all", 4) == {0, 1, 2, 3}
    assert parse_blocks("ALL", 2) == {0, 1}
    assert parse_blocks("3", 4) == {3}
    assert parse_blocks(3, 4) == {3}
    assert parse_blocks("0-15,20", 32) == set(range(16)) | {20}
    assert parse_blocks(" 1 - 2 , 0 ", 4) == {0, 1, 2}
    assert format_blocks({0, 1, 2, 3, 5, 7, 8}) == "0-3,5,7-8"
    assert format_blocks(set()) == ""


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty block selection"),
        ("a", "cannot read 'a'"),
        ("-1", "cannot read '-1'"),
        ("1.5", "cannot read '1.5'"),
        ("3-1", "runs backwards"),
        ("0-4", "block 4 is out of range; the model has blocks 0-3"),
        ("7", "block 7 is out of range"),
        ("0,,1", "cannot read ''"),
    ],
)
def test_parse_blocks_errors_name_the_field_and_value(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)) as err:
        parse_blocks(text, 4, where="freeze.trainable[0].blocks")
    assert str(err.value).startswith("freeze.trainable[0].blocks:")


@pytest.mark.parametrize(
    ("spec", "depth", "needle"),
    [
        (FreezeConfig(preset="lora"), 4, "freeze.preset: unknown preset 'lora'"),
        (
            FreezeConfig(preset="all"),
            4,
            "freeze.preset: preset 'all' is ambiguous and was split: use all-layers",
        ),
        (
            FreezeConfig(trainable=[TrainableSpec(modules=["ca", "mlp"])]),
            4,
            "freeze.trainable[0].modules: unknown kind 'mlp'",
        ),
        (
            FreezeConfig(
                trainable=[TrainableSpec(modules=["ca"]), TrainableSpec(modules=["ffn"], blocks="0-40")]
            ),
            32,
            "freeze.trainable[1].blocks: block 40 is out of range; the model has blocks 0-31",
        ),
        (FreezeConfig(trainable=[TrainableSpec(modules=[])]), 4, "freeze.trainable[0].modules: empty list"),
        (
            FreezeConfig(trainable=[TrainableSpec(modules=["ca"], blocks="")]),
            4,
            "freeze.trainable[0].blocks: empty",
        ),
        (FreezeConfig(trainable=[], subject_embedding=False), 4, "freeze: nothing to train"),
        (
            FreezeConfig(preset="arbooth", trainable=[TrainableSpec(modules=["ca"])]),
            4,
            "freeze: set either preset ('arbooth') or trainable, not both",
        ),
        (FreezeConfig(preset="early-half"), 1, "preset 'early-half' selects no block in a model of depth 1"),
        (FreezeConfig(trainable=[{"blocks": "0"}]), 4, "freeze.trainable[0].modules: missing"),
        (FreezeConfig(trainable=[{"modules": ["ca"], "block": "0"}]), 4, "unknown field(s) ['block']"),
        (FreezeConfig(trainable=[TrainableSpec(modules="ca")]), 4, "expected a list of kinds"),
        (FreezeConfig(), 0, "model depth must be a positive integer"),
    ],
)
def test_invalid_specs_fail_before_any_model(spec: FreezeConfig, depth: int, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        validate(spec, depth)


def test_valid_specs_pass_validation() -> None:
    """Valid specs pass, and what they then select is what they say."""
    names = _names(FakeInfinity(depth=4, chunks=2))
    for name in PRESETS:
        assert validate(FreezeConfig(preset=name), 32) is None
        assert validate(FreezeConfig(preset=name), 4) is None
        assert resolve_mask(FreezeConfig(preset=name), 4, names).trainable  # selects something
    default = FreezeConfig()  # no preset, no list: arbooth
    assert validate(default, 4) is None
    assert (
        resolve_mask(default, 4, names).trainable
        == resolve_mask(FreezeConfig(preset="arbooth"), 4, names).trainable
    )
    only_subject = FreezeConfig(trainable=[])  # subject embedding only
    assert validate(only_subject, 4) is None and only_subject.subject_embedding
    assert resolve_mask(only_subject, 4, names).trainable == set()
    listed = FreezeConfig(trainable=[{"blocks": "1-2", "modules": ["sa", "ada"]}])
    assert validate(listed, 4) is None
    want = _pick(names, BLOCK.format(c="0", j="1") + r"(sa\.|ada_gss)") | _pick(
        names, BLOCK.format(c="1", j="0") + r"(sa\.|ada_gss)"
    )
    want |= _pick(names, r"(shared_ada_lin|head_nm)\.")  # `ada` also owns the global AdaLN tensors
    assert resolve_mask(listed, 4, names).trainable == want


# ---- presets on the official names ----------------------------------------------------------------


@pytest.fixture
def fake() -> FakeInfinity:
    return FakeInfinity(depth=4, chunks=2)


def test_presets_select_exactly_the_right_names(fake: FakeInfinity) -> None:
    names = _names(fake)
    every = BLOCK.format(c=r"\d+", j=r"\d+")
    expected = {
        "arbooth": _pick(names, every + r"(ca|ffn)\."),
        "sa": _pick(names, every + r"sa\."),
        "ca": _pick(names, every + r"ca\."),
        "ffn": _pick(names, every + r"ffn\."),
        "all-layers": _pick(names, every + r"(sa|ca|ffn)\."),  # the paper's "all layers"
        "every-tensor": set(names),
        # depth 4, 2 blocks per chunk: blocks 0, 1 = chunk 0; blocks 2, 3 = chunk 1
        "early-half": _pick(names, BLOCK.format(c="0", j=r"\d+") + r"(ca|ffn)\."),
        "late-half": _pick(names, BLOCK.format(c="1", j=r"\d+") + r"(ca|ffn)\."),
    }
    assert set(expected) == set(PRESETS)
    for preset, want in expected.items():
        got = resolve_mask(FreezeConfig(preset=preset), 4, names).trainable
        assert got == want, preset
    # arbooth: 6 CA tensors + 4 FFN tensors per block; ca_norm stays frozen
    arbooth = resolve_mask(FreezeConfig(), 4, names).trainable
    assert len(arbooth) == 4 * 10
    assert not any("ca_norm" in n for n in arbooth)
    assert "block_chunks.1.module.0.ca.mat_q.bias" in arbooth


def test_kinds_global_tensors_and_block_ranges(fake: FakeInfinity) -> None:
    names = _names(fake)
    spec = FreezeConfig(
        trainable=[
            TrainableSpec(modules=["ada"], blocks="1"),
            TrainableSpec(modules=["ca_norm"], blocks="3"),
            TrainableSpec(modules=["embed", "head"], blocks="all"),
        ]
    )
    got = resolve_mask(spec, 4, names).trainable
    want = {
        "block_chunks.0.module.1.ada_gss",
        "shared_ada_lin.1.weight",
        "shared_ada_lin.1.bias",
        "head_nm.ada_lin.1.weight",
        "head_nm.ada_lin.1.bias",
        "block_chunks.1.module.1.ca_norm.weight",
        "block_chunks.1.module.1.ca_norm.bias",
        "word_embed.weight",
        "word_embed.bias",
        "lvl_embed.weight",
        "pos_start",
        "text_norm.weight",
        "text_proj_for_sos.ca.mat_q",
        "text_proj_for_sos.ca.mat_kv.weight",
        "text_proj_for_sos.ca.v_bias",
        "text_proj_for_sos.ca.proj.weight",
        "text_proj_for_sos.ca.proj.bias",
        "text_proj_for_ca.0.weight",
        "text_proj_for_ca.0.bias",
        "text_proj_for_ca.2.weight",
        "text_proj_for_ca.2.bias",
        "cfg_uncond",
        "head.weight",
        "head.bias",
    }
    assert got == want


def test_flat_block_naming_with_one_chunk() -> None:
    model = FakeInfinity(depth=3, chunks=1)
    mask = resolve_mask(FreezeConfig(trainable=[TrainableSpec(modules=["sa"], blocks="2")]), 3, _names(model))
    assert mask.trainable == _pick(_names(model), r"blocks\.2\.sa\.")
    assert len(mask.trainable) == 6


def test_model_block_prefix_is_used_and_depth_must_match(fake: FakeInfinity) -> None:
    calls: list[int] = []

    def prefix(i: int) -> str:
        calls.append(i)
        return f"block_chunks.{i // 2}.module.{i % 2}."

    fake.block_prefix = prefix  # type: ignore[method-assign]
    mask = resolve_for_model(FreezeConfig(preset="ffn"), fake, 4)
    assert sorted(calls) == [0, 1, 2, 3]
    assert len(mask.trainable) == 16
    with pytest.raises(ValueError, match="hold 4 blocks .* checked for depth 5"):
        resolve_mask(FreezeConfig(), 5, _names(fake))
    with pytest.raises(ValueError, match="outside 0-2"):
        resolve_mask(
            FreezeConfig(), 3, _names(fake), block_prefix=lambda i: f"block_chunks.{i // 2}.module.{i % 2}."
        )


def test_a_kind_the_model_lacks_is_an_error() -> None:
    names = [n for n in _names(FakeInfinity()) if not n.startswith("head.")]
    with pytest.raises(ValueError, match=r"freeze.trainable\[0\]: kind 'head' .* matches no parameter"):
        resolve_mask(FreezeConfig(trainable=[TrainableSpec(modules=["head"])]), 4, names)


def test_apply_mask_table_and_hparams(fake: FakeInfinity) -> None:
    spec = FreezeConfig(
        trainable=[TrainableSpec(modules=["ca", "ffn"], blocks="2-3"), TrainableSpec(modules=["head"])]
    )
    mask = resolve_for_model(spec, fake, 4)
    n = apply_mask(fake, mask)
    on = {name for name, p in fake.named_parameters() if p.requires_grad}
    assert on == mask.trainable
    assert n == sum(p.numel() for p in fake.parameters() if p.requires_grad)
    c, kv = 8, 6
    ca_numel = c * c + c + kv * 2 * c + c + c * c + c
    ffn_numel = c * 2 * c + 2 * c + 2 * c * c + c
    assert n == 2 * (ca_numel + ffn_numel) + (c * 8 + 8)

    table = mask.table(fake)
    lines = table.splitlines()
    assert lines[0].split() == ["block", *KINDS]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[1:-1]}
    assert set(rows) == {"0", "1", "2", "3", "global"}
    col = {k: i for i, k in enumerate(KINDS)}
    assert rows["0"][col["ca"]] == "-" and rows["0"][col["ffn"]] == "-"
    assert rows["2"][col["ca"]] == str(ca_numel) and rows["3"][col["ffn"]] == str(ffn_numel)
    assert rows["2"][col["sa"]] == "-"
    assert f"{n:,} of" in lines[-1]

    hp = mask.as_hparams()
    assert hp["freeze/source"] == "trainable"
    assert hp["freeze/blocks/ca"] == "2-3" and hp["freeze/blocks/ffn"] == "2-3"
    assert hp["freeze/blocks/sa"] == "none"
    assert hp["freeze/global"] == "head"
    assert hp["freeze/num_trainable_tensors"] == len(mask.trainable)
    assert all(isinstance(v, str | int | bool) for v in hp.values())

    # re-applying a different mask freezes what is no longer selected
    apply_mask(fake, resolve_for_model(FreezeConfig(preset="sa"), fake, 4))
    assert {name for name, p in fake.named_parameters() if p.requires_grad} == _pick(
        _names(fake), r".*\.sa\."
    )


def test_jsonargparse_reads_the_config_from_yaml() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--freeze", type=FreezeConfig, default=FreezeConfig())
    cfg = parser.parse_string(
        "freeze:\n  trainable:\n    - blocks: 3\n      modules: [ca, ffn]\n    - blocks: '0-1'\n      modules: [sa]\n"
    )
    spec = parser.instantiate(cfg).freeze
    assert isinstance(spec, FreezeConfig) and spec.preset is None
    mask = resolve_mask(spec, 4, _names(FakeInfinity()))
    assert mask.blocks_by_kind["ca"] == {3} and mask.blocks_by_kind["sa"] == {0, 1}


# ---- real parameter names ------------------------------------------------------------------------


def _manifest(name: str) -> dict:
    path = parity_dir() / "manifests" / f"{name}.json"
    assert path.is_file(), f"parity manifest {path} missing"
    return json.loads(path.read_text())


def test_arbooth_preset_on_the_released_2b_names() -> None:
    m = _manifest("infinity_2b")
    params = {e["key"]: e["shape"] for e in m["state_dict"] if e["kind"] == "parameter"}
    mask = resolve_mask(FreezeConfig(), 32, list(params))
    assert len(mask.trainable) == 32 * 10
    assert mask.trainable == _pick(list(params), r"block_chunks\.[0-7]\.module\.[0-3]\.(ca|ffn)\.")
    numel = sum(torch.Size(params[n]).numel() for n in mask.trainable)
    c = 2048
    per_block = (c * c + c) + 2 * c * c + c + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c)
    assert numel == 32 * per_block


def test_presets_on_the_real_tiny_infinity() -> None:
    presets = pytest.importorskip("varlit.models.presets")
    preset = presets.get_preset("tiny")
    model, _ = preset.build()
    depth = preset.infinity.depth
    names = _names(model)
    mask = resolve_for_model(FreezeConfig(), model, depth)
    assert mask.trainable == {
        n for n in names if re.search(r"\.(ca|ffn)\.", n) and n.startswith("block_chunks.")
    }
    assert len(mask.trainable) == depth * 10
    late = resolve_for_model(FreezeConfig(preset="late-half"), model, depth).trainable
    prefixes = tuple(model.block_prefix(i) for i in range(depth - depth // 2, depth))
    assert late == {n for n in mask.trainable if n.startswith(prefixes)}
    every = resolve_for_model(FreezeConfig(preset="every-tensor"), model, depth)
    assert every.trainable == set(names)
    apply_mask(model, mask)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == mask.trainable
    assert "global" in mask.table(model)
