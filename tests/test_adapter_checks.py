"""Questionable adapters are refused by name (issue 15, item 9): missing tensors, another base model, missing
subject vectors, unknown extra tensors, metadata that is not JSON; a float32 and a bf16 copy of the same base
both accept the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.test_run_folder import _fit
from varlit.cli import main
from varlit.models.loading import CheckpointError
from varlit.pipeline import Pipeline
from varlit.tuning.adapter import read_adapter


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapter")
    main(_fit(root, "a", 1))
    return root / "runs" / "a" / "adapter.safetensors"


def _rewrite(src: Path, dst: Path, edit_tensors=None, meta_text: str | None = None) -> Path:
    with safe_open(src, framework="pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if edit_tensors is not None:
        tensors = edit_tensors(tensors)
    if meta_text is not None:
        header["meta"] = meta_text
    save_file(tensors, dst, metadata=header)
    return dst


def test_a_complete_adapter_loads_on_its_base_in_float32_and_bfloat16(adapter):
    meta = read_adapter(adapter).meta
    assert meta["tensors"] and meta["subject_vectors"] is True and meta["base_fingerprint"]
    for dtype in ("float32", "bfloat16"):
        pipe = Pipeline.load("tiny", device="cpu", dtype=dtype, init_seed=0)
        pipe.load_adapter(adapter)
        assert pipe.base_backup


def test_missing_tensors_are_refused_by_name(adapter, tmp_path):
    def drop_half(t):
        model = sorted(k for k in t if k.startswith("model."))
        return {k: v for k, v in t.items() if k not in model[: len(model) // 2]}

    bad = _rewrite(adapter, tmp_path / "half.safetensors", drop_half)
    n = len(read_adapter(adapter).tensors) // 2
    with pytest.raises(
        CheckpointError, match=rf"half\.safetensors: adapter is missing {n} of its tuned tensors"
    ):
        read_adapter(bad)


def test_an_adapter_of_another_base_is_refused(adapter, capsys, tmp_path):
    # the command line: a base flag that contradicts the adapter's record is refused by name (issue 20)
    argv = ["sample", "--prompts", '["a photo of <placeholder> toy"]', "--out_dir", str(tmp_path / "s")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--adapter", str(adapter), "--init_seed", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("varlit sample: error: ") and str(adapter) in err
    assert "--init_seed 1 contradicts the adapter" in err and "init_seed 0" in err
    # whatever the flags say, the fingerprint of the base the adapter is put on decides
    pipe = Pipeline.load("tiny", device="cpu", dtype="float32", init_seed=1)
    with pytest.raises(CheckpointError, match=r"trained on another base model .*random-init\(0\)"):
        pipe.load_adapter(adapter)


def test_missing_subject_vectors_and_unknown_tensors_are_refused(adapter, tmp_path):
    no_vectors = _rewrite(
        adapter,
        tmp_path / "novec.safetensors",
        lambda t: {k: v for k, v in t.items() if k.startswith("model.")},
    )
    with pytest.raises(CheckpointError, match=r"novec\.safetensors: adapter is missing its subject vectors"):
        read_adapter(no_vectors)
    extra = _rewrite(adapter, tmp_path / "extra.safetensors", lambda t: {**t, "lora.up": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match=r"extra\.safetensors: adapter holds unknown tensors: lora\.up"):
        read_adapter(extra)
    extra_model = _rewrite(
        adapter, tmp_path / "extra2.safetensors", lambda t: {**t, "model.head.weight": torch.zeros(2, 2)}
    )
    with pytest.raises(CheckpointError, match=r"unknown tensors: model\.head\.weight"):
        read_adapter(extra_model)


def test_non_json_metadata_names_the_file(adapter, tmp_path):
    bad = _rewrite(adapter, tmp_path / "meta.safetensors", meta_text="{not json")
    with pytest.raises(CheckpointError, match=r"meta\.safetensors: adapter metadata is not valid JSON"):
        read_adapter(bad)
    meta = json.loads(json.dumps(read_adapter(adapter).meta))
    assert meta["preset"] == "tiny"


def test_sample_warns_about_prompts_without_the_placeholder(adapter, tmp_path, caplog):
    out = tmp_path / "s"
    argv = ["sample", "--adapter", str(adapter), "--prompts", '["a photo of toy"]', "--out_dir", str(out)]
    with caplog.at_level("WARNING", logger="varlit.commands.sample"):
        main(argv)
    assert "without <placeholder>" in caplog.text and "a photo of toy" in caplog.text
    assert len(list(out.glob("*.png"))) == 1


def test_sample_reads_the_adapter_and_resolves_the_preset_once(adapter, tmp_path, monkeypatch):
    # one pass down: `varlit sample` reads the adapter file once and resolves its preset once; the pipeline
    # is built from that preset and applies the adapter read (issue 21)
    import varlit.commands.sample as command
    import varlit.models.presets as presets
    import varlit.pipeline as pipeline
    import varlit.tuning.adapter as adapters

    calls = {"get_preset": 0, "open": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    get_preset = counted("get_preset", presets.get_preset)
    for module in (command, presets, pipeline):
        monkeypatch.setattr(module, "get_preset", get_preset)
    monkeypatch.setattr(adapters, "_open", counted("open", adapters._open))
    out = tmp_path / "s"
    argv = ["sample", "--adapter", str(adapter), "--prompts", '["a photo of <placeholder> toy"]']
    main([*argv, "--out_dir", str(out)])
    assert calls == {"get_preset": 1, "open": 1}
    assert len(list(out.glob("*.png"))) == 1
