"""The real presets have exactly the state-dict format of the released checkpoints (built on meta)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import parity_dir
from varlit.models.presets import get_preset

MANIFESTS = parity_dir() / "manifests"

CASES = [
    ("infinity-2b", "transformer", "infinity_2b.json"),
    ("infinity-2b", "vae", "infinity_vae_d32.json"),
    ("infinity-8b", "transformer", "infinity_8b.json"),
    ("infinity-8b", "vae", "infinity_vae_d56_f8_14_patchify.json"),
]


def _entries(module: torch.nn.Module) -> list[tuple[str, list[int], str]]:
    return [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]


@pytest.mark.parametrize(("preset", "part", "manifest"), CASES, ids=[f"{p}-{m}" for p, _, m in CASES])
def test_state_dict_matches_release(preset: str, part: str, manifest: str):
    path = MANIFESTS / manifest
    assert path.is_file(), f"manifest {path} missing"
    expected = json.loads(path.read_text())
    model, vae = get_preset(preset).build(device="meta")
    module = model if part == "transformer" else vae
    want = [(e["key"], e["shape"], e["dtype"]) for e in expected["state_dict"]]
    got = _entries(module)
    assert sorted(got) == sorted(want)
    assert [k for k, _, _ in got] == [k for k, _, _ in want], "same keys, different order"
    if part == "transformer":
        assert sum(p.numel() for p in module.parameters()) == expected["num_parameters"]
    params = {n for n, _ in module.named_parameters()}
    kinds = {e["key"]: e["kind"] for e in expected["state_dict"]}
    assert {k for k, kind in kinds.items() if kind == "parameter"} == params
