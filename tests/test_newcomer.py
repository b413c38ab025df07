"""A newcomer's first hour (issue 14): weights download, error order, commands and options, quiet output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from jsonargparse import Namespace

from tests.docs_pages import blocks, page
from varlit.cli import main
from varlit.commands.download import download, download_plan
from varlit.data import dreambench
from varlit.lightning_cli import map_optimisation_flags
from varlit.models import hub
from varlit.models.hub import HubUnavailableError
from varlit.models.loading import resolve
from varlit.threads import auto_threads, choose_threads

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments" / "tiny.yaml")
DREAMBENCH_YAML = str(REPO / "experiments" / "dreambench.yaml")
GETTING_STARTED = page("getting-started.md")  # the download commands
SAMPLING = page("sampling.md")  # the Python example
ADAPTERS = page("adapters.md")  # the adapter sizes


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """Hub online by setting, but its endpoint refuses connections; an empty hub cache."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hub, "_probe_cache", {})
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


# ------------------------------------------------------------------ getting the weights


def test_missing_weights_fail_fast_and_name_the_download_command_and_flag(unreachable_hub):
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError) as err:
        resolve("infinity_2b_reg.pth", "FoundationVision/Infinity", flag="--weights", preset="infinity-2b")
    assert time.perf_counter() - start < 10  # no retry loop against an unreachable hub
    msg = str(err.value)
    assert "\n" not in msg
    assert "`hf download FoundationVision/Infinity infinity_2b_reg.pth`" in msg
    assert "`varlit download --preset infinity-2b`" in msg
    assert "--weights PATH" in msg and "huggingface-cli" not in msg


def test_missing_text_encoder_names_its_flag(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    from varlit.models.text import TextEncoder

    with pytest.raises(HubUnavailableError) as err:
        TextEncoder.from_pretrained("google/flan-t5-xl-not-cached")
    msg = str(err.value)
    assert "`hf download google/flan-t5-xl-not-cached`" in msg and "--text_encoder PATH" in msg
    assert "HF_HUB_OFFLINE is set" in msg


def test_download_plan_matches_the_readme_and_the_hf_tool(capsys):
    plan = download_plan("infinity-2b")
    commands = [item.command() for item in plan]
    assert commands[0] == "hf download FoundationVision/Infinity infinity_2b_reg.pth"
    assert commands[1] == "hf download FoundationVision/Infinity infinity_vae_d32reg.pth"
    assert commands[2].startswith("hf download google/flan-t5-xl --include")
    for command in commands:  # the docs give exactly these commands
        assert command in GETTING_STARTED, command
    assert "huggingface-cli download" not in GETTING_STARTED  # not installed by huggingface_hub 1.x+
    assert download_plan("tiny") == []
    assert "--include 'infinity_8b_weights/*'" in download_plan("infinity-8b")[0].command()
    # `--dry_run` prints the commands; the `hf` tool of the venv accepts them
    main(["download", "--preset", "infinity-2b", "--dry_run", "true"])
    assert capsys.readouterr().out.splitlines() == commands
    hf = Path(sys.executable).parent / "hf"
    proc = subprocess.run([str(hf), "download", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--include" in proc.stdout


def test_download_offline_fails_at_once_with_the_commands(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        HubUnavailableError, match="hf download FoundationVision/Infinity infinity_2b_reg.pth"
    ):
        download("infinity-2b")


# ------------------------------------------------------------------ cheap checks before the weight lookup


def _error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip()


def test_missing_adapter_and_gpu_are_reported_before_the_weights(unreachable_hub, capsys):
    err = _error(
        capsys, ["sample", "--preset", "infinity-2b", "--prompts", '["x"]', "--adapter", "nope.safetensors"]
    )
    assert err == "varlit sample: error: adapter not found: nope.safetensors (--adapter)"
    if not torch.cuda.is_available():
        err = _error(capsys, ["sample", "--preset", "infinity-2b", "--prompts", '["x"]', "--device", "cuda"])
        assert "no CUDA GPU" in err and "--device cpu" in err
        err = _error(capsys, ["fit", "--config", DREAMBENCH_YAML, "--data.dreambench_root", "/nonexistent"])
        assert "GPU" in err and "--trainer.accelerator cpu" in err


def test_missing_dreambench_is_reported_before_the_weights(unreachable_hub, capsys, tmp_path):
    args = ["fit", "--config", DREAMBENCH_YAML, "--trainer.accelerator", "cpu", "--trainer.precision", "32"]
    err = _error(capsys, [*args, "--data.dreambench_root", str(tmp_path / "none")])
    assert err.startswith("varlit fit: error: no DreamBench at")
    assert "--data.dreambench_root" in err and "VARLIT_DREAMBENCH_DIR" in err and "make dreambench" in err


def test_dreambench_default_is_where_make_dreambench_puts_it(monkeypatch):
    monkeypatch.delenv(dreambench.DREAMBENCH_ENV, raising=False)
    assert dreambench.default_root() == Path("data/dreambench")
    make = (REPO / "Makefile").read_text()
    assert f"--out $(or $(DIR),{dreambench.DEFAULT_ROOT})" in make
    monkeypatch.setenv(dreambench.DREAMBENCH_ENV, "/x/db")
    assert dreambench.default_root() == Path("/x/db")


# ------------------------------------------------------------------ commands that do what they say


def test_validate_refuses_without_a_checkpoint(tmp_path, capsys):
    err = _error(capsys, ["validate", "--config", TINY, "--run.root", str(tmp_path)])
    assert "nothing to validate" in err and "last.ckpt does not exist" in err and "--ckpt_path" in err


def test_test_command_is_gone(capsys):
    err = _error(capsys, ["test", "--config", TINY])
    assert "varlit eval" in err
    main(["--help"])
    assert "test" not in capsys.readouterr().out.split("commands:")[1].split("sample")[0]


def test_unknown_key_is_one_line_with_a_hint(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", TINY, "--model.optim.lrr", "1"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) <= 2, lines
    assert "model.optim.lrr" in lines[0] and "did you mean --model.optim.lr?" in lines[0]


def test_help_piped_into_head_ends_quietly():
    code = "import sys; from varlit.cli import main; main(sys.argv[1:])"
    proc = subprocess.run(
        f"{sys.executable} -c '{code}' -h | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.stdout.startswith("usage: varlit")
    assert "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr


def test_lightning_optimisation_flags_are_mapped_or_refused():
    cfg = Namespace()
    cfg["trainer.accumulate_grad_batches"] = 4
    cfg["trainer.gradient_clip_val"] = 1.0
    cfg["trainer.gradient_clip_algorithm"] = None
    cfg["model.optim.accumulate_grad_batches"] = 1
    cfg["model.optim.grad_clip"] = None
    map_optimisation_flags(cfg)
    assert cfg["model.optim.accumulate_grad_batches"] == 4 and cfg["trainer.accumulate_grad_batches"] == 1
    assert cfg["model.optim.grad_clip"] == 1.0 and cfg["trainer.gradient_clip_val"] is None
    cfg["trainer.gradient_clip_val"] = 0.5
    cfg["trainer.gradient_clip_algorithm"] = "value"
    with pytest.raises(ValueError, match="--model.optim.grad_clip"):
        map_optimisation_flags(cfg)


def test_sweep_launch_accepts_a_gpu_id(capsys):
    from varlit.sweeps.cli import main as sweeps_main

    code = sweeps_main(
        ["launch", "ablate-layers", "--config", TINY, "--steps", "1", "--gpus", "0", "--print"]
    )
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("#")]
    assert lines[0].startswith("CUDA_VISIBLE_DEVICES=0 python -m varlit.sweeps run ablate-layers")


def test_sweeps_wandb_does_not_silently_rewrite_files(tmp_path, capsys):
    from varlit.sweeps.cli import main as sweeps_main

    assert sweeps_main(["wandb", "ablate-layers", "--out", str(tmp_path)]) == 0
    path = tmp_path / "ablate-layers.yaml"
    original = path.read_text()
    assert sweeps_main(["wandb", "ablate-layers", "--out", str(tmp_path)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert sweeps_main(["wandb", "ablate-layers", "--out", str(tmp_path), "--steps", "7"]) == 1
    assert "--force" in capsys.readouterr().err and path.read_text() == original
    assert sweeps_main(["wandb", "ablate-layers", "--out", str(tmp_path), "--steps", "7", "--force"]) == 0
    assert path.read_text() != original


# ------------------------------------------------------------------ training options


def test_lr_schedule_with_warmup():
    from lightning.pytorch import Trainer

    from varlit.module import OptimConfig, SubjectTuningModule

    m = SubjectTuningModule(preset="tiny")
    assert isinstance(m.configure_optimizers(), torch.optim.AdamW)  # constant, no warm-up: the paper
    m = SubjectTuningModule(preset="tiny", optim=OptimConfig(lr_schedule="cosine", warmup_steps=4))
    m.trainer = Trainer(max_steps=14, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    factors = [m.lr_factor(s) for s in range(15)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[9] == pytest.approx(0.5) and factors[14] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    conf = m.configure_optimizers()
    assert conf["lr_scheduler"]["interval"] == "step"
    with pytest.raises(ValueError, match="optim.lr_schedule"):
        SubjectTuningModule(preset="tiny", optim=OptimConfig(lr_schedule="step"))
    with pytest.raises(ValueError, match="alternating"):
        SubjectTuningModule(
            preset="tiny", optim=OptimConfig(accumulate_grad_batches=2, schedule="alternating")
        )


NOISE = (
    "Tip: For seamless",  # Lightning's adverts
    "anonymous setting",  # wandb
    "Total FLOPs",
    "args parameter is intended",  # LightningCLI with both args and sys.argv
    "not resumable",
    "/-2",  # "Epoch 0/-2"
)


def _fit(tmp_path: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    argv = [
        "fit",
        "--config",
        TINY,
        "--run.root",
        str(tmp_path / "runs"),
        "--run.name",
        "t",
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        "2",
        "--trainer.log_every_n_steps",
        "1",
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    cmd = [sys.executable, "-m", "varlit.cli", *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_fit_options_quiet_output_and_resumable_data(tmp_path, capsys):
    """One short run with accumulation, Lightning's clip flag, warm-up and intermediate adapters; then a
    resume mid-epoch and `varlit validate` on the run's checkpoint."""
    options = (
        "--trainer.accumulate_grad_batches",
        "2",
        "--trainer.gradient_clip_val",
        "1.0",
        "--model.optim.warmup_steps",
        "2",
        "--run.adapter_every_n_steps",
        "1",
        "--run.adapter_keep_last",
        "2",
    )
    proc = _fit(tmp_path, 2, *options)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for noise in NOISE:
        assert noise not in out, noise
    assert "Epoch 0" in out  # the progress bar of tiny.yaml is on
    assert re.search(r"\b4/4\b", out)  # 2 steps x 2 accumulated batches: the bar counts batches
    run = tmp_path / "runs" / "t"
    config = (run / "config.yaml").read_text()
    assert "accumulate_grad_batches: 2" in config and "grad_clip: 1.0" in config
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    # 2 steps x 2 accumulated batches were drawn; the loader's state is the data module's position
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches_consumed": 4}]
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 2  # the warm-up scheduler stepped once per step
    assert sorted(p.name for p in run.glob("adapter-step*.safetensors")) == [
        "adapter-step000001.safetensors",
        "adapter-step000002.safetensors",
    ]
    rows = (run / "per_scale_losses.csv").read_text().splitlines()
    assert rows[0] == "step,loss,scale,value" and rows[-1].startswith("2,")  # written at the end of the run
    summary = json.loads((run / "summary.json").read_text())
    share = 100 * summary["trainable_params"] / summary["total_params"]
    assert f"({share:.2f}%)" in out  # the share printed at fit start is the one summary.json gives
    lrs = [float(r["train/lr"]) for r in _csv_rows(run / "csv" / "metrics.csv") if r.get("train/lr")]
    assert lrs and lrs[0] == pytest.approx(1e-3 / 2)  # first step at half the lr (warm-up of 2)

    # resume mid-epoch: the data loader is resumable, so Lightning has nothing to warn about
    proc = _fit(tmp_path, 3, "--ckpt_path", "last", *options)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "not resumable" not in out
    assert sorted(p.name for p in run.glob("adapter-step*.safetensors")) == [  # only the newest 2 kept
        "adapter-step000002.safetensors",
        "adapter-step000003.safetensors",
    ]
    loader_state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["loops"]["fit_loop"]
    assert loader_state["state_dict"]["combined_loader"] == [{"batches_consumed": 6}]

    # validate scores the run's checkpoint by default
    main(["validate", "--config", TINY, "--run.root", str(tmp_path / "runs"), "--run.name", "t", *options])
    assert f"validating {run / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().out


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ sampling


def test_negative_prompt_replaces_the_null_text(tiny_pipeline):
    from varlit.models.sampler import SamplingConfig

    guided = SamplingConfig(cfg=4.0)
    base = tiny_pipeline.generate(["a red toy"], guided, seed=3).images_B3HW
    again = tiny_pipeline.generate(["a red toy"], guided, seed=3, negative_prompt=None).images_B3HW
    neg = tiny_pipeline.generate(["a red toy"], guided, seed=3, negative_prompt="blurry").images_B3HW
    assert torch.equal(base, again) and not torch.equal(base, neg)
    # the unconditional rows are exactly the negative prompt's features: same as guiding with its text
    from varlit.models.sampler import sample

    text = tiny_pipeline.encode(["a red toy"])
    negative = tiny_pipeline.encode(["blurry"])
    from varlit.models.sampler import make_generator

    direct = sample(
        tiny_pipeline.model,
        tiny_pipeline.vae,
        text,
        tiny_pipeline.schedule(),
        guided,
        generator=make_generator(3, tiny_pipeline.device),
        negative=negative,
    ).images_B3HW
    assert torch.equal(direct, neg)
    # without guidance (cfg 1) there are no unconditional rows: the negative prompt changes nothing
    plain = SamplingConfig(cfg=1.0)
    a = tiny_pipeline.generate(["a red toy"], plain, seed=3).images_B3HW
    b = tiny_pipeline.generate(["a red toy"], plain, seed=3, negative_prompt="blurry").images_B3HW
    assert torch.equal(a, b)


def test_sample_writes_grammatical_count_and_records_negative_prompt(tmp_path, capsys):
    out = tmp_path / "s"
    main(["sample", "--prompts", '["a toy"]', "--negative_prompt", "blurry", "--out_dir", str(out)])
    assert re.search(r"wrote 1 image to ", capsys.readouterr().out)
    assert json.loads((out / "samples.json").read_text())["negative_prompt"] == "blurry"


def test_grid_tiles_are_captioned():
    from varlit.callbacks.samples import make_grid

    images = torch.zeros(2, 3, 32, 32)
    plain = make_grid(images, 2)
    labelled = make_grid(images, 2, ["a photo of toy | seed 0", "a red toy | seed 0"])
    assert labelled.shape[0] > plain.shape[0] and labelled.shape[1] == plain.shape[1]
    band = labelled[32:].numpy()
    assert (band < 128).any()  # dark text pixels under the tiles
    other = make_grid(images, 2, ["another prompt | seed 7", "a red toy | seed 0"]).numpy()
    assert not np.array_equal(other, labelled.numpy())


# ------------------------------------------------------------------ threads


def test_thread_policy():
    assert auto_threads(cores=2, load=1.1) == 1  # one core busy elsewhere: one thread
    assert auto_threads(cores=2, load=0.1) == 2
    assert auto_threads(cores=2, load=5.0) == 1
    assert auto_threads(cores=16, load=3.0) == 13
    assert choose_threads({"VARLIT_THREADS": "3"}) == 3
    assert choose_threads({"OMP_NUM_THREADS": "2"}) is None  # the user's choice stands
    assert choose_threads({}) >= 1
    with pytest.raises(ValueError, match="VARLIT_THREADS"):
        choose_threads({"VARLIT_THREADS": "zero"})


# ------------------------------------------------------------------ docs: Python API, adapter size


def test_docs_python_example_runs_on_tiny(tmp_path, monkeypatch):
    from varlit.module import SubjectTuningModule

    block = blocks(SAMPLING, "python")[0].text
    assert 'Pipeline.load("infinity-2b")' in block and "pipe.load_adapter(" in block
    adapter = tmp_path / "adapter.safetensors"
    SubjectTuningModule(preset="tiny").save_adapter(adapter)
    code = block.replace('"infinity-2b"', '"tiny", device="cpu"').replace(
        '"runs/dreambench/adapter.safetensors"', repr(str(adapter))
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/sampling.md", "exec"), {})
    assert (tmp_path / "dog_snow.png").stat().st_size > 0


def test_docs_adapter_size_is_computed_from_the_presets():
    from varlit.models.infinity import Infinity
    from varlit.models.presets import get_preset
    from varlit.tuning.freeze import FreezeConfig, resolve_for_model

    for name, billions, gb32, gb16 in (("infinity-2b", "1.61 B", "6.44 GB", "3.22 GB"),):
        p = get_preset(name)
        with torch.device("meta"):
            model = Infinity(p.infinity)
        mask = resolve_for_model(FreezeConfig(), model, p.infinity.depth)
        n = sum(t.numel() for k, t in model.named_parameters() if k in mask.trainable)
        assert (
            f"{n / 1e9:.2f} B" == billions
            and f"{4 * n / 1e9:.2f} GB" == gb32
            and f"{2 * n / 1e9:.2f} GB" == gb16
        )
        text = " ".join(ADAPTERS.split())
        assert f"has {billions} parameters" in text and f"{gb32} in float32, {gb16} in bfloat16" in text


def test_adapter_dtype_option(tmp_path):
    from varlit.callbacks.adapter import AdapterCheckpoint
    from varlit.module import SubjectTuningModule
    from varlit.tuning.adapter import read_adapter

    m = SubjectTuningModule(preset="tiny")
    m.save_adapter(tmp_path / "a32.safetensors")
    m.save_adapter(tmp_path / "a16.safetensors", dtype=torch.bfloat16)
    a32, a16 = read_adapter(tmp_path / "a32.safetensors"), read_adapter(tmp_path / "a16.safetensors")
    assert {t.dtype for t in a32.tensors.values()} == {torch.float32}
    assert {t.dtype for t in a16.tensors.values()} == {torch.bfloat16}
    size32, size16 = (
        (tmp_path / "a32.safetensors").stat().st_size,
        (tmp_path / "a16.safetensors").stat().st_size,
    )
    assert size16 < 0.6 * size32
    with pytest.raises(ValueError, match="adapter dtype"):
        AdapterCheckpoint(dtype="int8")


def test_validation_kl_is_clamped_at_zero(monkeypatch):
    """Rounding makes the KL of two equal distributions about -1e-9; validation shows 0 instead."""
    from types import SimpleNamespace

    from varlit.module import SubjectTuningModule

    class Batch:
        schedule = None

        def to(self, device):
            return self

        def __len__(self) -> int:
            return 1

    m = SubjectTuningModule(preset="tiny")
    m._trainer = SimpleNamespace(datamodule=SimpleNamespace(train_dataloader=lambda: [Batch()]))
    monkeypatch.setattr(m, "instance_loss", lambda *a, **k: (torch.tensor(0.5), torch.tensor([0.5])))
    monkeypatch.setattr(m, "prior_batch", lambda batch, g: (None, None))
    monkeypatch.setattr(
        m, "prior_loss", lambda pb, text, s: (torch.tensor(-1e-9), torch.tensor([-1e-9, 0.2]))
    )
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(m, "log_dict", lambda d, **kw: logged.update(d))
    m._validation_losses()
    assert float(logged["val/prior_loss"]) == 0.0 and float(logged["val/prior_kl_scale00"]) == 0.0
    assert float(logged["val/prior_kl_scale01"]) == pytest.approx(0.2)
