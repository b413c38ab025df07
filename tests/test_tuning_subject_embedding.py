"""Subject embedding: placeholder search, splicing (expand, not overwrite), gradients, init."""

from __future__ import annotations

import pytest
import torch

from varlit.models.text import TextBatch
from varlit.tuning.subject_embedding import SubjectEmbedding, find_placeholder, splice_placeholder


def _reference_splice(feats, lens, pos, vecs):
    """Per-sample loop, the obvious way: rows before, the N vectors, rows after, zero padding."""
    B, _, C = feats.shape
    rows, new_lens = [], []
    for b in range(B):
        valid = feats[b, : lens[b]]
        if pos[b] >= 0:
            valid = torch.cat([valid[: pos[b]], vecs, valid[pos[b] + 1 :]])
        rows.append(valid)
        new_lens.append(valid.shape[0])
    T = feats.shape[1] + vecs.shape[0] - 1
    out = torch.zeros(B, T, C)
    for b, r in enumerate(rows):
        out[b, : r.shape[0]] = r
    return out, torch.tensor(new_lens)


def test_splice_replaces_the_placeholder_row_by_all_vectors() -> None:
    g = torch.Generator().manual_seed(0)
    B, T, C, N = 5, 7, 3, 4
    feats = torch.randn(B, T, C, generator=g)
    lens = torch.tensor([7, 4, 5, 1, 6])
    pos = torch.tensor([6, 0, 2, -1, 3])  # last row, first row, middle, none, middle
    for b in range(B):
        feats[b, lens[b] :] = 99.0  # padding garbage must never be read
    vecs = torch.randn(N, C, generator=g)
    out, new_lens = splice_placeholder(feats, lens, pos, vecs)
    want, want_lens = _reference_splice(feats, lens.tolist(), pos.tolist(), vecs)
    assert out.shape == (B, T + N - 1, C)
    assert new_lens.tolist() == want_lens.tolist() == [10, 7, 8, 1, 9]
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert new_lens.dtype == lens.dtype


def test_gradients_reach_the_vectors_only_where_spliced() -> None:
    emb = SubjectEmbedding(num_vectors=2, channels=3)
    feats = torch.randn(3, 4, 3)
    lens = torch.tensor([4, 3, 2])
    pos = torch.tensor([1, -1, 0])
    out, _ = emb(feats, lens, pos)
    probe = torch.randn_like(out)
    (out * probe).sum().backward()
    # sample 0: vectors at rows 1, 2; sample 2: rows 0, 1; sample 1 has no placeholder
    want = probe[0, 1:3] + probe[2, 0:2]
    torch.testing.assert_close(emb.vectors.grad, want)
    assert not feats.requires_grad


def test_zeros_init_class_word_init_and_dtype() -> None:
    emb = SubjectEmbedding()
    assert emb.vectors.shape == (4, 2048) and emb.num_vectors == 4
    assert emb.vectors.abs().sum().item() == 0
    assert [n for n, _ in emb.named_parameters()] == ["vectors"]
    small = SubjectEmbedding(num_vectors=3, channels=2)
    word = torch.tensor([[1.0, 2.0], [3.0, -2.0]])
    small.init_from_features(word)
    torch.testing.assert_close(small.vectors.data, torch.tensor([[2.0, 0.0]] * 3))
    with pytest.raises(ValueError, match="class-word features have 5 channels"):
        small.init_from_features(torch.zeros(1, 5))
    # half-precision T5 features with float32 vectors give float32 rows
    out, _ = small(torch.randn(1, 3, 2).half(), torch.tensor([3]), torch.tensor([1]))
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="num_vectors must be at least 1"):
        SubjectEmbedding(num_vectors=0)


def test_find_placeholder() -> None:
    ids = torch.tensor([[5, 9, 32100, 1, 0], [5, 1, 0, 0, 0], [32100, 7, 1, 0, 32100]])
    lens = torch.tensor([4, 2, 3])
    assert find_placeholder(ids, 32100, lens).tolist() == [2, -1, 0]  # padding ignored
    with pytest.raises(ValueError, match="prompt 2 holds the placeholder token 2 times"):
        find_placeholder(ids, 32100)


def test_bad_inputs_are_rejected() -> None:
    feats = torch.zeros(2, 4, 3)
    lens = torch.tensor([4, 2])
    with pytest.raises(ValueError, match="position >= length"):
        splice_placeholder(feats, lens, torch.tensor([0, 2]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="text features have 3 channels"):
        splice_placeholder(feats, lens, torch.tensor([0, 1]), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="grows to 7 text rows, more than 6"):
        splice_placeholder(feats, lens, torch.tensor([0, 1]), torch.zeros(4, 3), max_length=6)


def test_splice_text_on_a_text_batch() -> None:
    emb = SubjectEmbedding(num_vectors=2, channels=3)
    with torch.no_grad():
        emb.vectors.fill_(1.5)
    text = TextBatch(torch.randn(2, 3, 3), torch.tensor([3, 2]))
    out = emb.splice_text(text, torch.tensor([1, -1]))
    assert isinstance(out, TextBatch)
    assert out.lengths_B.tolist() == [4, 2]
    torch.testing.assert_close(out.features_BTC[0, 1:3], torch.full((2, 3), 1.5))
    torch.testing.assert_close(out.features_BTC[0, 3], text.features_BTC[0, 2])
    torch.testing.assert_close(out.features_BTC[1, :2], text.features_BTC[1, :2])
    with pytest.raises(TypeError, match="features_BTC"):
        emb.splice_text({"features_BTC": text.features_BTC}, torch.tensor([0, 0]))
