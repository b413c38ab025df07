"""Checkpoint loading (local files, shards, VAE wrappers), strict key checks and the CLI's error lines."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from varlit.cli import main
from varlit.models.loading import CheckpointError, load_checkpoint, read_state_dict, resolve
from varlit.models.presets import get_preset
from varlit.models.text import HubUnavailableError, TextEncoder


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return get_preset("tiny").build()


def test_pth_roundtrip_strict_onto_meta(tmp_path, tiny_models):
    model, vae = tiny_models
    torch.save(model.state_dict(), tmp_path / "m.pth")
    torch.save({"vae": vae.state_dict()}, tmp_path / "v.pth")
    m2, v2 = get_preset("tiny").build("meta")
    load_checkpoint(m2, tmp_path / "m.pth", "unused/repo")
    load_checkpoint(v2, tmp_path / "v.pth", "unused/repo", subkey="vae")
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert all(not t.is_meta for t in v2.state_dict().values())


def test_bf16_cast(tmp_path, tiny_models):
    model, _ = tiny_models
    torch.save(model.state_dict(), tmp_path / "m.pth")
    m2, _ = get_preset("tiny").build("meta")
    load_checkpoint(m2, tmp_path / "m.pth", "r", dtype=torch.bfloat16)
    assert m2.head.weight.dtype == torch.bfloat16


def test_sharded_safetensors_with_index_and_optional_zero_buffers(tmp_path, tiny_models):
    model, _ = tiny_models
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("zero_k_bias")}
    keys = sorted(state)
    half = len(keys) // 2
    folder = tmp_path / "weights"
    folder.mkdir()
    save_file({k: state[k] for k in keys[:half]}, folder / "a.safetensors")
    save_file({k: state[k] for k in keys[half:]}, folder / "b.safetensors")
    index = {
        "weight_map": {k: ("a.safetensors" if i < half else "b.safetensors") for i, k in enumerate(keys)}
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    m2, _ = get_preset("tiny").build("meta")
    load_checkpoint(m2, folder, "r")
    assert torch.equal(m2.head.weight, model.head.weight)
    assert (m2.blocks[0].sa.zero_k_bias == 0).all()


def test_vae_plain_names_are_accepted(tmp_path, tiny_models):
    _, vae = tiny_models
    plain = {re.sub(r"\.(conv|norm)\.(weight|bias)$", r".\2", k): v for k, v in vae.state_dict().items()}
    assert "encoder.conv_in.weight" in plain
    torch.save({"vae": plain}, tmp_path / "v.pth")
    _, v2 = get_preset("tiny").build("meta")
    load_checkpoint(v2, tmp_path / "v.pth", "r", subkey="vae")
    assert torch.equal(v2.encoder.conv_in.conv.weight, vae.encoder.conv_in.conv.weight)


def test_wrong_shapes_missing_and_unexpected_keys_are_listed(tmp_path, tiny_models):
    model, _ = tiny_models
    state = dict(model.state_dict())
    state["head.weight"] = torch.zeros(3, 3)
    del state["pos_start"]
    state["extra.thing"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    m2, _ = get_preset("tiny").build("meta")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(m2, tmp_path / "bad.pth", "r")
    msg = str(err.value)
    assert "bad.pth" in msg.splitlines()[0]
    assert "missing keys (1): pos_start" in msg
    assert "unexpected keys (1): extra.thing" in msg
    assert "head.weight (checkpoint (3, 3)" in msg


def test_truncated_and_pickled_checkpoints_fail_cleanly(tmp_path, tiny_models):
    model, _ = tiny_models
    torch.save(model.state_dict(), tmp_path / "m.pth")
    data = (tmp_path / "m.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        read_state_dict(tmp_path / "trunc.pth")

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # creates the marker if the pickle ever runs

    torch.save({"x": Evil()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=True)
    with pytest.raises(CheckpointError, match="evil.pth"):
        read_state_dict(tmp_path / "evil.pth")
    # the error alone proves nothing (a later "not a dict of tensors" check raises it too): the payload
    # must never have run
    assert not marker.exists()
    torch.load(tmp_path / "evil.pth", weights_only=False)  # the check of the check: unpickling runs it
    assert marker.exists()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")


def test_missing_local_file_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not found"):
        resolve(tmp_path / "nope.pth", "FoundationVision/Infinity")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        HubUnavailableError, match="hf download FoundationVision/Infinity infinity_2b_reg.pth"
    ):
        resolve("infinity_2b_reg.pth", "FoundationVision/Infinity")
    with pytest.raises(HubUnavailableError, match="google/flan-t5-xl"):
        TextEncoder.from_pretrained("google/flan-t5-xl")


# -- the CLI: one line naming the offending thing, non-zero exit ------------------------------------------


def _cli_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[0]


def test_cli_bad_inputs(capsys, tmp_path, tiny_models):
    out = str(tmp_path / "out")
    assert "unknown preset 'nope'" in _cli_error(
        capsys, "sample", "--preset", "nope", "--prompts", '["x"]', "--out_dir", out
    )
    assert "h/w=1.1" in _cli_error(
        capsys, "sample", "--h_div_w", "1.1", "--prompts", '["x"]', "--out_dir", out
    )
    assert "pn='3M'" in _cli_error(capsys, "sample", "--pn", "3M", "--prompts", '["x"]', "--out_dir", out)
    assert "empty prompt list" in _cli_error(capsys, "sample", "--prompts", "[]", "--out_dir", out)

    model, vae = tiny_models
    state = dict(model.state_dict())
    state["word_embed.weight"] = torch.zeros(128, 3)
    torch.save(state, tmp_path / "shapes.pth")
    torch.save({"vae": vae.state_dict()}, tmp_path / "v.pth")
    line = _cli_error(
        capsys,
        "sample",
        "--weights",
        str(tmp_path / "shapes.pth"),
        "--vae_weights",
        str(tmp_path / "v.pth"),
        "--prompts",
        '["x"]',
        "--out_dir",
        out,
    )
    assert "shapes.pth" in line and "word_embed.weight" in line
    (tmp_path / "corrupt.pth").write_bytes(b"\x00garbage")
    line = _cli_error(
        capsys,
        "sample",
        "--weights",
        str(tmp_path / "corrupt.pth"),
        "--vae_weights",
        str(tmp_path / "v.pth"),
        "--prompts",
        '["x"]',
        "--out_dir",
        out,
    )
    assert "corrupt.pth" in line
    assert not (tmp_path / "out").exists()


def test_cli_sample_writes_pngs(tmp_path, capsys):
    main(
        [
            "sample",
            "--prompts",
            '["a photo of a dog", "a cat"]',
            "--seeds",
            "[0, 1]",
            "--out_dir",
            str(tmp_path),
            "--sampling.cfg",
            "3",
        ]
    )
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 4
    index = json.loads((tmp_path / "samples.json").read_text())
    assert {(i["prompt"], i["seed"]) for i in index["images"]} == {
        (p, s) for p in ("a photo of a dog", "a cat") for s in (0, 1)
    }
    assert index["sampling"]["cfg"] == 3.0
    from PIL import Image

    assert Image.open(tmp_path / pngs[0]).size == (256, 256)
