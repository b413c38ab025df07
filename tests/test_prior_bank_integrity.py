"""Prior-bank shards carry a checksum (issue 15, item 8): truncated, garbled or silently changed shards are
named and drawn again by `build`, and never read as teacher samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.test_tuning_prior_bank import FakeSampler, _all, _bank
from varlit.tuning.prior_bank import StaleBankError


def _shard(bank, k: int) -> Path:
    return bank.root / f"shard-{k:05d}.safetensors"


def _changed_numbers(path: Path) -> None:
    """Rewrite a shard with one logit changed and its metadata kept (a valid file with wrong numbers)."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["logits"][0, 0, 0] = float("nan")
    save_file(tensors, path, metadata=meta)


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "changed_numbers"])
def test_a_damaged_shard_is_named_and_drawn_again(tmp_path: Path, damage: str) -> None:
    bank = _bank(tmp_path / "bank", logits_dtype="float32")
    sampler = FakeSampler()
    bank.build(sampler, log=lambda _: None)
    expected = _all(bank)
    path = _shard(bank, 1)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "random_bytes":
        path.write_bytes(torch.randint(0, 256, (path.stat().st_size,), dtype=torch.uint8).numpy().tobytes())
    else:
        _changed_numbers(path)

    reader = _bank(tmp_path / "bank", logits_dtype="float32")  # a new process: nothing verified yet
    with pytest.raises(StaleBankError, match=r"shard-00001\.safetensors is (unreadable|checksum mismatch)"):
        reader.batch([5])

    messages: list[str] = []
    rebuild = FakeSampler()
    reader.build(rebuild, log=messages.append)
    assert any("shard-00001.safetensors" in m and "drawing it again" in m for m in messages), messages
    assert rebuild.calls == 2  # only the damaged shard (4 samples, batches of 3) was drawn again
    got = _all(reader)
    for name in ("prompt_index_B", "bits_BLd", "x_BLd_wo_prefix", "logits_BLV"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
