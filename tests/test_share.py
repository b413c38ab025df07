"""Interop: the peft round trip, the model card, `varlit push` up to the upload, and the diffusers-shaped API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.docs_pages import blocks, page, section
from varlit.cli import main
from varlit.models.presets import get_preset
from varlit.models.text import TextBatch
from varlit.module import SubjectTuningModule
from varlit.pipeline import Pipeline, load_base
from varlit.tuning.lora import AdapterConfig


def _randomised(module: SubjectTuningModule, seed: int = 1) -> SubjectTuningModule:
    """Non-zero trained tensors without training (LoRA's B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.student.named_parameters():
            if name in module.mask.trainable:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory) -> Path:
    m = _randomised(SubjectTuningModule(preset="tiny", adapter=AdapterConfig(type="lora", rank=4)))
    return m.save_adapter(tmp_path_factory.mktemp("lora") / "adapter.safetensors")


@pytest.fixture(scope="module")
def exported(lora_adapter, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "peft"
    main(["export", "--adapter", str(lora_adapter), "--format", "peft", "--out", str(out), "--samples", "2"])
    return out


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    """Teacher-forced logits of a fixed input on the tiny schedule (random T5 features, two prompts)."""
    schedule = get_preset("tiny").schedule(1.0, None)
    length = sum(h * w for h, w in schedule)
    g = torch.Generator().manual_seed(0)
    bits, channels = get_preset("tiny").infinity.bits, get_preset("tiny").infinity.text_channels
    x = torch.randn(2, length - 1, bits, generator=g)
    text = TextBatch(torch.randn(2, 6, channels, generator=g), torch.tensor([6, 4]))
    return model(text, x, schedule, drop_condition=False)


def test_peft_loads_the_export_and_gives_varlits_logits(lora_adapter, exported):
    from peft import PeftModel

    assert (exported / "adapter_config.json").is_file() and (exported / "adapter_model.safetensors").is_file()
    base, _ = load_base(get_preset("tiny"), None, None, torch.device("cpu"), torch.float32, 0)
    before = _logits(base.eval())
    peft_model = PeftModel.from_pretrained(base, str(exported)).eval()
    pipe = Pipeline.load("tiny", device="cpu", dtype="float32")
    pipe.load_adapter(lora_adapter)  # varlit merges the LoRA update into the weights
    theirs, ours = _logits(peft_model), _logits(pipe.model)
    assert not torch.allclose(before, ours, atol=1e-3)  # the adapter changes the logits ...
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)  # ... and peft's are varlit's


def test_the_model_card_has_the_hub_header(exported):
    text = (exported / "README.md").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["base_model"] == "varlit/tiny" and header["license"] == "mit"
    assert header["library_name"] == "peft" and "arbooth" in header["tags"]
    assert "<placeholder>" in header["instance_prompt"]
    urls = [w["output"]["url"] for w in header["widget"]]
    assert len(urls) == 2 and all((exported / u).is_file() for u in urls)


def test_a_full_adapter_has_no_peft_form(tmp_path, capsys):
    m = _randomised(SubjectTuningModule(preset="tiny"))
    path = m.save_adapter(tmp_path / "full.safetensors")
    with pytest.raises(SystemExit):
        main(["export", "--adapter", str(path), "--out", str(tmp_path / "out"), "--samples", "0"])
    assert "--model.adapter.type lora" in capsys.readouterr().err


def test_push_checks_the_repo_and_fails_offline_in_one_line(lora_adapter, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main(["push", "--adapter", str(lora_adapter), "--repo", "no-user-part"])
    assert "give the hub repo as user/name" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "upload"
    with pytest.raises(SystemExit):
        main(
            ["push", "--adapter", str(lora_adapter), "--repo", "me/cup", "--out", str(out), "--samples", "1"]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE" in err[0] and "me/cup" in err[0]
    # the folder it would have uploaded
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "varlit_adapter.safetensors",
    ):
        assert (out / name).is_file(), name


def test_the_diffusers_shaped_api(exported):
    pipe = Pipeline.from_pretrained("tiny")
    base = pipe("a photo of a toy", num_images=2, seed=0)
    assert len(base) == 2 and base[0].mode == "RGB" and base[0].size == (256, 256)
    assert not np.array_equal(np.asarray(base[0]), np.asarray(base[1]))  # two draws, not one image twice
    pipe.load_adapter(exported)  # an export folder (or the .safetensors itself)
    tuned = pipe("a photo of <placeholder> subject", num_images=1, seed=0)
    from_folder = Pipeline.from_pretrained(str(exported))("a photo of <placeholder> subject", seed=0)
    assert np.array_equal(np.asarray(tuned[0]), np.asarray(from_folder[0]))
    pipe.unload_adapter()
    again = pipe.to("cpu")("a photo of a toy", num_images=2, seed=0)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(base, again))


def _docs_blocks() -> tuple[list[str], str]:
    """The commands of docs/adapters.md's "Sharing adapters" and its diffusers-shaped Python example."""
    text = page("adapters.md")
    bash = blocks(section(text, "Sharing adapters"), "bash")[0].text
    python = blocks(section(text, "A diffusers-shaped API"), "python")[0].text
    return [line for line in bash.splitlines() if line.startswith("varlit ")], python


def test_the_docs_sharing_commands_run(tmp_path, monkeypatch, capsys):
    import shlex

    repo = Path(__file__).resolve().parents[1]
    commands, python = _docs_blocks()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in tests: the push stops before uploading
    for command in commands:
        argv = [
            a.replace("experiments/", f"{repo}/experiments/") for a in shlex.split(command, comments=True)
        ]
        if argv[1] == "fit":  # seconds, not the config's 150 steps
            argv += ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--run.wandb", "false"]
        if argv[1] == "push":
            with pytest.raises(SystemExit):
                main(argv[1:] + ["--samples", "0"])
            assert "HF_HUB_OFFLINE" in capsys.readouterr().err
            continue
        main(argv[1:])
    assert (tmp_path / "runs" / "world-lora" / "peft" / "adapter_model.safetensors").is_file()
    code = python.replace('pipe.to("cuda")', 'pipe.to("cpu")')
    scope: dict = {}
    exec(compile(code, "docs/adapters.md", "exec"), scope)
    assert len(scope["images"]) == 4 and scope["images"][0].size == (64, 64)
