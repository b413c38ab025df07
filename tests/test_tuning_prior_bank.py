"""Prior bank: round trip, resume after a kill, growth, stale detection, bad samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from varlit.tuning.prior_bank import PriorBank, PriorBankConfig, StaleBankError

L, D = 6, 4
IDENTITY = {"teacher": "tiny@abc123", "schedule": [[1, 1], [1, 1], [2, 2]], "cfg": 1.0, "tau": 0.5}


class FakeSampler:
    """Deterministic in the generator; records every call and what it returned."""

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after
        self.returned: list[tuple[torch.Tensor, ...]] = []

    def __call__(self, prompts: torch.Tensor, gen: torch.Generator):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        b = prompts.shape[0]
        bits = torch.randint(0, 2, (b, L, D), generator=gen, dtype=torch.uint8)
        x = torch.randn(b, L - 1, D, generator=gen)
        logits = torch.randn(b, L, 2 * D, generator=gen) * 3 + prompts.view(b, 1, 1).float()
        self.returned.append((prompts.clone(), bits, x, logits))
        return bits, x, logits


def _bank(root: Path, **kw) -> PriorBank:
    cfg = PriorBankConfig(root=str(root), **{"num_samples": 10, "shard_size": 4, "batch_size": 3, **kw})
    return PriorBank(cfg, IDENTITY, num_prompts=3)


def _all(bank: PriorBank):
    return bank.batch(list(range(len(bank))))


def test_round_trip_float32_is_exact(tmp_path: Path) -> None:
    bank = _bank(tmp_path / "bank", logits_dtype="float32")
    assert bank.status() == "missing"
    sampler = FakeSampler()
    bank.build(sampler, log=lambda _: None)
    assert bank.status() == "complete"
    assert sampler.calls == 2 + 2 + 1  # shards of 4, 4, 2 samples in batches of 3
    prompts = torch.cat([r[0] for r in sampler.returned])
    bits = torch.cat([r[1] for r in sampler.returned])
    x = torch.cat([r[2] for r in sampler.returned])
    logits = torch.cat([r[3] for r in sampler.returned])
    got = _all(bank)
    assert got.prompt_index_B.tolist() == [i % 3 for i in range(10)] == prompts.tolist()
    assert torch.equal(got.bits_BLd, bits) and got.bits_BLd.dtype == torch.uint8
    assert torch.equal(got.x_BLd_wo_prefix, x)
    assert torch.equal(got.logits_BLV, logits) and got.logits_BLV.dtype == torch.float32
    one = bank[7]
    assert one.bits_BLd.shape == (1, L, D) and torch.equal(one.logits_BLV[0], logits[7])
    mixed = bank.batch(torch.tensor([9, 0, 5]))
    assert torch.equal(mixed.x_BLd_wo_prefix, x[[9, 0, 5]])
    with pytest.raises(IndexError, match="sample 10 out of range 0-9"):
        bank.batch([10])


def test_float16_logits_are_close(tmp_path: Path) -> None:
    bank = _bank(tmp_path / "bank")
    sampler = FakeSampler()
    bank.build(sampler, log=lambda _: None)
    logits = torch.cat([r[3] for r in sampler.returned])
    torch.testing.assert_close(_all(bank).logits_BLV, logits, rtol=1e-3, atol=1e-3)
    with safe_shard(bank, 0) as f:
        assert f.get_slice("logits").get_dtype() == "F16"


def safe_shard(bank: PriorBank, k: int):
    from safetensors import safe_open

    return safe_open(bank.root / f"shard-{k:05d}.safetensors", framework="pt")


def test_resume_after_a_kill_continues_and_matches_an_uninterrupted_build(tmp_path: Path) -> None:
    full = _bank(tmp_path / "full")
    full.build(FakeSampler(), log=lambda _: None)

    bank = _bank(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        bank.build(FakeSampler(fail_after=3), log=lambda _: None)  # dies in the middle of shard 1
    assert bank.status() == "partial"
    assert not list(bank.root.glob("shard-00001*"))
    with pytest.raises(StaleBankError, match="partial; call build"):
        bank[0]
    (bank.root / ".tmp-leftover.safetensors").write_bytes(b"junk")
    (bank.root / "shard-00001.safetensors").write_bytes(b"orphan, not in the index")

    again = FakeSampler()
    bank.build(again, log=lambda _: None)
    assert again.calls == 2 + 1  # only shards 1 and 2
    assert not list(bank.root.glob(".tmp-*"))
    a, b = _all(full), _all(bank)
    for name in ("prompt_index_B", "bits_BLd", "x_BLd_wo_prefix", "logits_BLV"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name

    # a shard the index lists but whose file is gone is redrawn
    index = (bank.root / "index.json").read_text()
    (bank.root / "shard-00002.safetensors").unlink()
    assert bank.status() == "partial"
    redo = FakeSampler()
    PriorBank(bank.cfg, IDENTITY, 3).build(redo, log=lambda _: None)
    assert redo.calls == 1
    assert (bank.root / "index.json").read_text() == index


def test_growing_the_bank_draws_only_new_samples(tmp_path: Path) -> None:
    small = _bank(tmp_path / "bank", num_samples=6)
    small.build(FakeSampler(), log=lambda _: None)
    first = _all(small)
    big = _bank(tmp_path / "bank", num_samples=12)
    assert big.status() == "partial"
    grow = FakeSampler()
    big.build(grow, log=lambda _: None)
    assert grow.calls == 2 + 2  # shard 1 (was 2 samples, now 4) and shard 2
    assert torch.equal(_all(big).bits_BLd[:6], first.bits_BLd)


@pytest.mark.parametrize(
    "change",
    [
        {"identity": {**IDENTITY, "teacher": "tiny@def456"}},
        {"identity": {**IDENTITY, "tau": 1.0}},
        {"seed": 1},
        {"logits_dtype": "bfloat16"},
        {"num_prompts": 2},
    ],
)
def test_stale_bank_is_detected_and_rebuilt(tmp_path: Path, change: dict) -> None:
    old = _bank(tmp_path / "bank")
    old.build(FakeSampler(), log=lambda _: None)
    before = _all(old)
    cfg_kw = {k: v for k, v in change.items() if k in ("seed", "logits_dtype")}
    cfg = PriorBankConfig(root=str(tmp_path / "bank"), num_samples=10, shard_size=4, batch_size=3, **cfg_kw)
    new = PriorBank(cfg, change.get("identity", IDENTITY), change.get("num_prompts", 3))
    assert new.config_hash != old.config_hash
    assert new.status() == "stale"
    with pytest.raises(StaleBankError, match="stale"):
        new[0]
    messages: list[str] = []
    sampler = FakeSampler()
    new.build(sampler, log=messages.append)
    assert any("rebuilding" in m for m in messages)
    assert sampler.calls == 5 and new.status() == "complete"
    assert old.status() == "stale"
    if "num_prompts" not in change and "seed" not in change:
        # the same generators: only what depends on the settings changes
        assert torch.equal(_all(new).bits_BLd, before.bits_BLd)


def test_bad_samples_and_settings_are_rejected(tmp_path: Path) -> None:
    bank = _bank(tmp_path / "bank")
    with pytest.raises(ValueError, match=r"x_wo_prefix must be \[3, 5, 4\]"):
        bank.build(
            lambda p, g: (torch.zeros(3, L, D, dtype=torch.uint8), torch.zeros(3, L, D), torch.zeros(3, L, 8))
        )
    with pytest.raises(ValueError, match="bits must be integer 0/1"):
        bank.build(
            lambda p, g: (
                torch.full((3, L, D), 2, dtype=torch.uint8),
                torch.zeros(3, L - 1, D),
                torch.zeros(3, L, 8),
            )
        )
    with pytest.raises(ValueError, match="not finite as float16"):
        bank.build(
            lambda p, g: (
                torch.zeros(3, L, D, dtype=torch.uint8),
                torch.zeros(3, L - 1, D),
                torch.full((3, L, 8), 1e6),
            )
        )
    with pytest.raises(ValueError, match="prior_bank.logits_dtype: unknown 'int8'"):
        _bank(tmp_path / "x", logits_dtype="int8")
    with pytest.raises(ValueError, match="prior_bank.shard_size"):
        _bank(tmp_path / "x", shard_size=0)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        PriorBank(PriorBankConfig(root=str(tmp_path / "x")), {"teacher": object()}, 1)


def test_two_runs_sharing_a_bank_draw_it_once(tmp_path: Path) -> None:
    """A sweep's seeds share one bank folder: a second build that starts while the first holds the lock
    waits for it, then finds the bank complete and draws nothing."""
    import fcntl
    import threading

    root = tmp_path / "bank"
    root.mkdir()
    first, second = FakeSampler(), FakeSampler()
    done = threading.Event()
    with open(root / ".lock", "a+b") as held:  # the first run is building
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: (_bank(root).build(second, log=lambda _: None), done.set()))
        waiter.start()
        assert not done.wait(0.5), "the second build did not wait for the lock"
        builder = _bank(root)  # the first run draws while it holds the lock
        builder._build_locked(first, "cpu", lambda _: None, lambda _: None)
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    waiter.join(timeout=30)
    assert done.is_set()
    assert first.calls == 5 and second.calls == 0
    assert torch.equal(_all(_bank(root)).logits_BLV, _all(builder).logits_BLV)
