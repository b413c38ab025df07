"""Parity with the official Infinity code on the golden cases of `$VARLIT_PARITY_DIR` (default: the vendored
tests/fixtures/parity, which holds case-a and case-p, the 8B's spatial-patchify path).

Every sub-directory holding a config.json is a case; everything is read from it (widths, schedules,
aspect ratios, per-scale cfg/tau). Tolerances follow the fixtures' README.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import VENDORED_PARITY_DIR, parity_dir
from varlit.models.infinity import Infinity, rope_cos_sin
from varlit.models.loading import load_into
from varlit.models.presets import infinity_config_from_official, vae_config_from_official
from varlit.models.quantizer import encode_code, multiscale_quantize
from varlit.models.sampler import SamplingConfig, sample, to_uint8
from varlit.models.text import TextBatch
from varlit.models.vae import BSQVAE

ROOT = parity_dir()
CASES = sorted(p.parent for p in ROOT.glob("*/config.json") if p.parent.name != "manifests")


def test_parity_dir_has_cases():
    """The parity folder holds cases; never a skip (the public cases are vendored in the repository)."""
    assert CASES, f"no parity case (a folder with config.json) under {ROOT}"


def test_vendored_cases_include_the_patchify_path():
    """case-a and case-p (the 8B's spatial patchify, 2x2 latent codes per token) travel with the project."""
    names = {p.parent.name for p in VENDORED_PARITY_DIR.glob("*/config.json")}
    assert {"case-a", "case-p"} <= names
    cfg = json.loads((VENDORED_PARITY_DIR / "case-p" / "config.json").read_text())
    assert cfg["infinity"]["all_arguments"]["apply_spatial_patchify"] == 1
    assert cfg["d"] == 4 * cfg["vae"]["args"]["codebook_dim"]
    for part in ("model", "vae", "io"):
        assert (VENDORED_PARITY_DIR / "case-p" / f"{part}.safetensors").stat().st_size > 0


class Case:
    def __init__(self, path: Path):
        self.path = path
        self.cfg = json.loads((path / "config.json").read_text())
        self.io = load_file(str(path / "io.safetensors"))
        inf_args = self.cfg["infinity"]["all_arguments"]
        self.patchify = bool(inf_args.get("apply_spatial_patchify", 0))
        self.vae = BSQVAE(vae_config_from_official(self.cfg["vae"]["args"]))
        load_into(self.vae, load_file(str(path / "vae.safetensors")), str(path / "vae.safetensors"))
        self.vae.eval()
        bits = self.cfg["d"]
        self.model = Infinity(infinity_config_from_official(inf_args, bits)).eval()
        load_into(self.model, load_file(str(path / "model.safetensors")), str(path / "model.safetensors"))
        self.schedule = [(h, w) for _, h, w in self.cfg["scale_schedule"]]
        self.vae_schedule = [(2 * h, 2 * w) for h, w in self.schedule] if self.patchify else self.schedule
        self.text = TextBatch(self.io["text.features"], self.io["text.lengths"])


@pytest.fixture(scope="module", params=CASES, ids=[p.name for p in CASES])
def case(request) -> Case:
    torch.manual_seed(0)
    return Case(request.param)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@torch.no_grad()
def test_vae_encoder(case: Case):
    raw = case.vae.encode_raw(case.io["image"])
    assert _max_err(raw, case.io["vae.raw_features"]) <= 1e-4


@torch.no_grad()
def test_bit_labels_and_teacher_forcing_inputs(case: Case):
    q = multiscale_quantize(case.io["vae.raw_features"], case.vae_schedule, patchify=case.patchify)
    assert q.bits_BLd.shape == case.io["vae.bits"].shape
    assert torch.equal(q.bits_BLd, case.io["vae.bits"])
    assert _max_err(q.x_BLd_wo_prefix, case.io["vae.x_BLC_wo_prefix"]) <= 1e-5
    code = encode_code(case.io["vae.raw_features"], case.vae_schedule)
    assert _max_err(code, case.io["vae.code_full"]) <= 1e-5


@torch.no_grad()
def test_vae_decoder(case: Case):
    assert _max_err(case.vae.decode(case.io["vae.code_full"]), case.io["vae.decoded"]) <= 1e-4


@torch.no_grad()
def test_rope_table_and_text_pooling(case: Case):
    table = rope_cos_sin(case.schedule, case.model.cfg.head_dim)
    assert _max_err(table, case.io["debug.rope_cos_sin"]) <= 1e-5
    ctx = case.model.encode_text(case.text)
    assert _max_err(ctx.pooled_BC, case.io["debug.text_pooled"]) <= 1e-5


@torch.no_grad()
def test_teacher_forced_logits(case: Case):
    logits = case.model(case.text, case.io["vae.x_BLC_wo_prefix"], case.schedule)
    err = _max_err(logits, case.io["transformer.logits"])
    print(f"{case.path.name}: max abs logit error {err:.3g}")
    assert err <= 1e-4


@torch.no_grad()
def test_greedy_cfg_sampling(case: Case):
    s = case.cfg["sampling"]
    out = sample(
        case.model,
        case.vae,
        case.text,
        case.schedule,
        SamplingConfig(cfg=s["cfg_list"], tau=s["tau_list"], top_k=1, top_p=0.0),
        seed=s.get("g_seed"),
        patchify=case.patchify,
        return_logits=True,
    )
    assert torch.equal(out.bits_BLd, case.io["sample.bits"])
    assert _max_err(out.logits_BLV, case.io["sample.logits"]) <= 1e-4
    assert _max_err(out.x_BLd_wo_prefix, case.io["sample.x_BLC_wo_prefix"]) <= 1e-5
    assert _max_err(out.code_BdHW, case.io["sample.code_full"]) <= 1e-5
    bgr = to_uint8(out.images_B3HW).flip(-1)
    diff = (bgr.int() - case.io["sample.image_bgr_u8"].int()).abs()
    assert diff.max().item() <= 1
