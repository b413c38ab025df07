"""The on-disk tensor cache: keys, atomic writes, corruption detection and the hit/miss counters."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from varlit.data import cache as cache_mod
from varlit.data.cache import TensorCache, cache_key, module_fingerprint

SPEC = {"a": ((2, 3), torch.float32), "bits": ((-1, 4), torch.uint8)}


def entry(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(2, 3, generator=g),
        "bits": torch.randint(0, 2, (5, 4), generator=g, dtype=torch.uint8),
    }


def test_roundtrip_and_counters(tmp_path):
    cache = TensorCache(tmp_path)
    key = cache_key(kind="x", content="abc")
    assert cache.load("x", key, SPEC) is None
    assert (cache.stats.hits, cache.stats.misses) == (0, 1)
    saved = entry()
    path = cache.save("x", key, saved, note="src.jpg")
    assert path.exists() and path.suffix == ".safetensors"
    loaded = TensorCache(tmp_path).load("x", key, SPEC)  # a new run reuses the file
    assert loaded is not None
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert cache.load("x", key, SPEC) is not None
    assert (cache.stats.hits, cache.stats.misses, cache.stats.corrupt) == (1, 1, 0)
    assert not list(path.parent.glob("*.tmp")), "temporary files must not outlive a save"


def test_keys_change_with_every_part():
    base = dict(content="abc", pn="1M", size=(1024, 1024), vae="ckpt-a")
    k = cache_key(**base)
    assert k == cache_key(**dict(reversed(list(base.items()))))  # order-independent
    for field, other in (("content", "abd"), ("pn", "0.25M"), ("size", (512, 512)), ("vae", "ckpt-b")):
        assert cache_key(**{**base, field: other}) != k


def test_key_includes_format_version(monkeypatch):
    k = cache_key(content="abc")
    monkeypatch.setattr(cache_mod, "CACHE_VERSION", "999")
    assert cache_key(content="abc") != k


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "wrong_shape", "garbage"])
def test_corrupt_entries_are_detected_logged_and_removed(tmp_path, caplog, damage):
    cache = TensorCache(tmp_path)
    key = cache_key(content=damage)
    path = cache.save("x", key, entry())
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 7])
    elif damage == "flip_byte":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # last byte is tensor payload
    elif damage == "wrong_shape":
        cache.save("x", key, {"a": torch.zeros(3, 3), "bits": torch.zeros(5, 4, dtype=torch.uint8)})
    else:
        path.write_bytes(b"\x00" * 64)
    with caplog.at_level(logging.WARNING, logger="varlit.data.cache"):
        assert cache.load("x", key, SPEC) is None
    assert not path.exists()
    assert (cache.stats.hits, cache.stats.misses, cache.stats.corrupt) == (0, 1, 1)
    msgs = [r.getMessage() for r in caplog.records]
    assert any(str(path) in m and "corrupt" in m for m in msgs)
    if damage == "flip_byte":
        assert any("checksum mismatch" in m for m in msgs)
    if damage == "wrong_shape":
        assert any("expected torch.float32[2, 3]" in m for m in msgs)


def test_entry_written_for_another_key_is_rejected(tmp_path):
    cache = TensorCache(tmp_path)
    k1, k2 = cache_key(content="1"), cache_key(content="2")
    cache.save("x", k1, entry())
    cache.path("x", k2).parent.mkdir(parents=True, exist_ok=True)
    cache.path("x", k1).rename(cache.path("x", k2))
    assert cache.load("x", k2, SPEC) is None and cache.stats.corrupt == 1


def test_failed_write_keeps_the_old_entry_and_leaves_no_temp_file(tmp_path, monkeypatch):
    cache = TensorCache(tmp_path)
    key = cache_key(content="keep")
    old = entry(0)
    path = cache.save("x", key, old)

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cache.save("x", key, entry(1))
    assert list(path.parent.iterdir()) == [path]
    loaded = cache.load("x", key, SPEC)
    assert loaded is not None and torch.equal(loaded["a"], old["a"])


def test_module_fingerprint_tracks_weights():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    assert module_fingerprint(a) != module_fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert module_fingerprint(a) == module_fingerprint(b)
    with torch.no_grad():
        b.weight[3, 3] += 1.0  # small tensors are sampled entirely
    assert module_fingerprint(a) != module_fingerprint(b)
