"""LoRA subject adapters (peft) on the tiny preset: the base at step 0, what trains, the teacher as the base with
LoRA off, merged vs unmerged logits, the adapter round trip and swaps, bad input, resume, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import set_peft_model_state_dict

from tests.helpers import make_subject_photos, trainer
from varlit.cli import main
from varlit.data.datamodule import SubjectDataModule
from varlit.models.infinity import Infinity
from varlit.models.loading import CheckpointError
from varlit.models.text import TextBatch
from varlit.module import OptimConfig, PriorConfig, SubjectTuningModule
from varlit.pipeline import Pipeline, load_base
from varlit.tuning.adapter import read_adapter, save_adapter
from varlit.tuning.freeze import FreezeConfig, TrainableSpec
from varlit.tuning.lora import AdapterConfig, LoraPlan, inject

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory):
    return make_subject_photos(tmp_path_factory.mktemp("subject") / "toy", n=3)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _dm(subject_dir, cache_dir, batch_size: int = 2, repeats: int = 100) -> SubjectDataModule:
    return SubjectDataModule(
        subject_dir=str(subject_dir),
        class_word="toy",
        batch_size=batch_size,
        repeats=repeats,
        cache_dir=str(cache_dir),
    )


def _lora(rank: int = 4, **kw) -> AdapterConfig:
    return AdapterConfig(type="lora", rank=rank, **kw)


def _inputs(model: Infinity, seed: int = 0):
    """A teacher-forcing input of the tiny schedule and two prompts of random T5 features."""
    from varlit.models.presets import get_preset

    p = get_preset("tiny")
    schedule = p.schedule(1.0, None)
    L = sum(h * w for h, w in schedule)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, L - 1, model.cfg.bits, generator=g)
    text = TextBatch(torch.randn(2, 6, model.cfg.text_channels, generator=g), torch.tensor([6, 4]))
    return text, x, schedule


@torch.no_grad()
def _logits(model: Infinity, seed: int = 0) -> torch.Tensor:
    was = model.training
    model.eval()
    text, x, schedule = _inputs(model, seed)
    out = model(text, x, schedule, drop_condition=False)
    model.train(was)
    return out


def _base() -> Infinity:
    from varlit.models.presets import get_preset

    model, _ = load_base(get_preset("tiny"), None, None, torch.device("cpu"), torch.float32, 0)
    return model.eval()


def _randomize_lora(module: SubjectTuningModule, seed: int = 1) -> None:
    """Non-zero LoRA tensors without training (B is zero at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.student.named_parameters():
            if name in module.mask.trainable:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# ------------------------------------------------------------------------------------------ step 0


@pytest.mark.parametrize("freeze", ["arbooth", "all-layers", "every-tensor"])
@pytest.mark.parametrize("init", [True, "gaussian"])
def test_at_step_0_lora_output_equals_the_base_exactly(freeze, init):
    m = SubjectTuningModule(preset="tiny", freeze=FreezeConfig(preset=freeze), adapter=_lora(init=init))
    assert m.lora is not None and m.mask.trainable
    assert torch.equal(_logits(m.student), _logits(_base()))


@pytest.mark.parametrize(
    ("kind", "layer", "alpha", "scaling"),
    [("sa", "sa.mat_qkv", None, 1.0), ("ca", "ca.mat_kv", None, 1.0), ("ca", "ca.mat_kv", 8.0, 2.0)],
)
def test_lora_on_the_attention_qkv_and_text_kv_is_live(kind, layer, alpha, scaling):
    """The attentions read mat_qkv / mat_kv with an outside bias: a wrapped layer must still apply LoRA, and
    apply it as W + (alpha / r) B A, alpha defaulting to r (scaling 1): the logits equal those of the base
    with that update added to the weight by hand."""
    spec = FreezeConfig(preset=None, trainable=[TrainableSpec(modules=[kind], blocks="0")])
    m = SubjectTuningModule(preset="tiny", freeze=spec, adapter=_lora(rank=4, alpha=alpha))
    prefix = f"block_chunks.0.module.0.{layer}"
    params = dict(m.student.named_parameters())
    a, b = params[f"{prefix}.lora_A.default.weight"], params[f"{prefix}.lora_B.default.weight"]
    with torch.no_grad():
        b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    base = _base()
    before = _logits(base)
    with torch.no_grad():
        dict(base.named_parameters())[f"{prefix}.weight"].add_(scaling * b @ a)
    by_hand = _logits(base)
    assert (by_hand - before).abs().max() > 1e-3  # the update is not negligible
    torch.testing.assert_close(_logits(m.student), by_hand, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ what trains


def test_only_lora_and_subject_vectors_train_and_base_and_teacher_stay_bitwise(
    tmp_path, subject_dir, cache_dir
):
    m = SubjectTuningModule(
        preset="tiny", optim=OptimConfig(lr=1e-2), adapter=_lora(rank_per_kind={"ffn": 2})
    )
    lora_names = set(m.mask.trainable)
    assert lora_names and all(".lora_A." in n or ".lora_B." in n for n in lora_names)
    assert {n for n, p in m.student.named_parameters() if p.requires_grad} == lora_names
    assert all(m.student.get_parameter(n).shape[0] == 2 for n in lora_names if ".ffn." in n and "lora_A" in n)
    before = {k: v.detach().clone() for k, v in m.student.state_dict().items()}
    base_logits = _logits(_base())

    grads: dict[str, bool] = {}

    class Grads(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            for n, p in pl_module.named_parameters():
                grads[n] = grads.get(n, False) or p.grad is not None

    trainer(tmp_path, 3, callbacks=[Grads()]).fit(m, _dm(subject_dir, cache_dir))
    got_grad = {n for n, g in grads.items() if g}
    assert got_grad == {f"student.{n}" for n in lora_names} | {"subject_embedding.vectors"}

    after = m.student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == lora_names  # every base tensor bitwise unchanged
    assert m.subject_embedding.vectors.abs().sum() > 0
    # The teacher is the same module with LoRA off: no second copy, and exactly the base's outputs.
    own = {p.data_ptr() for p in m.student.parameters()}
    with m.teacher_model() as teacher:
        assert teacher is m.student and not teacher.training
        assert {p.data_ptr() for p in teacher.parameters()} == own
        assert torch.equal(_logits(teacher), base_logits)
    assert not torch.equal(_logits(m.student), base_logits)  # the trained LoRA is on again afterwards
    assert {n for n, p in m.student.named_parameters() if p.requires_grad} == lora_names


def test_lora_with_bf16_frozen_blocks_and_gradient_checkpointing():
    """bf16 frozen base, float32 LoRA (tuned_dtype), autocast and checkpointing give the plain gradients."""
    from varlit.bench import build_bench_module

    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m, batch = build_bench_module("tiny", "bank", torch.device("cpu"), torch.bfloat16, 2, adapter=_lora())
        m.student.gradient_checkpointing = ckpt
        _randomize_lora(m)
        dtypes = {n: p.dtype for n, p in m.student.named_parameters()}
        assert all(dtypes[n] == torch.float32 for n in m.mask.trainable)
        assert dtypes["block_chunks.0.module.0.ffn.fc1.base_layer.weight"] == torch.bfloat16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = m.instance_loss(batch, None, self_correct_inputs=False)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.student.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() == set(m.mask.trainable)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------------ adapters


def _trained_adapter(tmp_path: Path, **kw) -> tuple[SubjectTuningModule, Path]:
    m = SubjectTuningModule(preset="tiny", adapter=_lora(**kw))
    _randomize_lora(m)
    with torch.no_grad():
        m.subject_embedding.vectors.normal_()
    return m, m.save_adapter(tmp_path / "adapter.safetensors")


def test_adapter_file_holds_only_lora_tensors_subject_vectors_and_config(tmp_path):
    m, path = _trained_adapter(tmp_path, rank_per_kind={"ca": 2, "ffn": 6})
    a = read_adapter(path)
    assert set(a.tensors) == {f"{t}.lora_{x}.weight" for t in m.lora.targets for x in "AB"}
    assert a.subject_vectors is not None
    cfg = a.meta["adapter"]
    assert cfg["type"] == "lora" and cfg["targets"] == m.lora.targets
    assert {cfg["ranks"][t] for t in cfg["targets"] if ".ca." in t} == {2}
    assert {cfg["ranks"][t] for t in cfg["targets"] if ".ffn." in t} == {6}
    assert a.meta["preset"] == "tiny" and a.meta["base_fingerprint"]
    n = sum(v.numel() for v in a.tensors.values())
    assert n == sum(p.numel() for name, p in m.student.named_parameters() if name in m.mask.trainable)


def test_save_load_apply_gives_identical_logits(tmp_path):
    m, path = _trained_adapter(tmp_path, rank_per_kind={"ca": 2, "ffn": 6})
    # unmerged: a fresh base with the file's LoRA tensors loaded into peft layers
    fresh = _base()
    inject(fresh, LoraPlan.from_meta(read_adapter(path).meta["adapter"], "test"))
    result = set_peft_model_state_dict(fresh, read_adapter(path).tensors, adapter_name="default")
    assert not [k for k in result.unexpected_keys if "lora" in k]
    assert torch.equal(_logits(fresh), _logits(m.student))


def test_merged_and_unmerged_sampling_logits_agree(tmp_path):
    m, path = _trained_adapter(tmp_path)
    pipe = Pipeline.load("tiny", device="cpu", dtype="float32", init_seed=0)
    pipe.load_adapter(path)
    assert not any("lora" in n for n, _ in pipe.model.named_parameters())  # merged: plain linears again
    merged = _logits(pipe.model)
    unmerged = _logits(m.student)
    assert not torch.allclose(merged, _logits(_base()), atol=1e-3)  # the adapter does something
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_swapping_adapters_restores_the_base_exactly_without_reloading(tmp_path):
    _, first = _trained_adapter(tmp_path / "a", rank=4)
    (tmp_path / "b").mkdir()
    m2 = SubjectTuningModule(preset="tiny", adapter=_lora(rank=8))
    _randomize_lora(m2, seed=7)
    second = m2.save_adapter(tmp_path / "b" / "adapter.safetensors")
    pipe = Pipeline.load("tiny", device="cpu", dtype="float32", init_seed=0)
    base = _logits(pipe.model)
    pipe.load_adapter(first)
    one = _logits(pipe.model)
    pipe.load_adapter(second)  # restores the base, then merges the other subject (another rank)
    two = _logits(pipe.model)
    pipe.load_adapter(first)
    assert torch.equal(_logits(pipe.model), one) and not torch.equal(one, two)
    pipe.restore_base()
    assert torch.equal(_logits(pipe.model), base)


# ------------------------------------------------------------------------------------------ bad input


def test_a_lora_adapter_for_another_preset_or_rank_is_refused_by_value(tmp_path):
    m, path = _trained_adapter(tmp_path, rank=4)
    a = read_adapter(path)
    pipe = Pipeline.load("tiny", device="cpu", dtype="float32", init_seed=0)

    other = save_adapter(
        tmp_path / "other.safetensors", a.tensors, a.subject_vectors, {**a.meta, "preset": "world"}
    )
    with pytest.raises(CheckpointError, match="trained on preset 'world', the pipeline is 'tiny'"):
        pipe.load_adapter(other)

    cfg = {**a.meta["adapter"], "ranks": {t: 8 for t in a.meta["adapter"]["ranks"]}}
    lied = save_adapter(
        tmp_path / "rank.safetensors", a.tensors, a.subject_vectors, {**a.meta, "adapter": cfg}
    )
    with pytest.raises(CheckpointError, match=r"shapes A \(4, 128\).*config says rank 8"):
        pipe.load_adapter(lied)
    assert torch.equal(_logits(pipe.model), _logits(_base()))  # nothing was applied

    other_base = Pipeline.load("tiny", device="cpu", dtype="float32", init_seed=1)
    with pytest.raises(CheckpointError, match="trained on another base model"):
        other_base.load_adapter(path)

    # resuming a rank-4 run's checkpoint with rank 8
    ckpt = {"state_dict": dict(m.state_dict())}
    with pytest.raises(ValueError, match="trained with LoRA rank 4 .*this run has rank 8"):
        SubjectTuningModule(preset="tiny", adapter=_lora(rank=8)).on_load_checkpoint(ckpt)


def test_rank_0_and_kinds_without_linear_layers_are_refused_by_value():
    with pytest.raises(ValueError, match=r"^adapter.rank must be an integer >= 1, got 0$"):
        SubjectTuningModule(preset="tiny", adapter=_lora(rank=0))
    with pytest.raises(ValueError, match=r"adapter.rank_per_kind.ffn must be an integer >= 1, got 0"):
        SubjectTuningModule(preset="tiny", adapter=_lora(rank_per_kind={"ffn": 0}))
    spec = FreezeConfig(preset=None, trainable=[TrainableSpec(modules=["ca_norm"], blocks="0-1")])
    with pytest.raises(ValueError, match=r"kind 'ca_norm' \(blocks 0-1\) matches no linear layer"):
        SubjectTuningModule(preset="tiny", freeze=spec, adapter=_lora())
    with pytest.raises(ValueError, match=r"adapter.rank_per_kind: kind 'sa' is not a LoRA target"):
        SubjectTuningModule(preset="tiny", adapter=_lora(rank_per_kind={"sa": 4}))
    with pytest.raises(ValueError, match=r"adapter.init: unsupported value 'pissa'"):
        SubjectTuningModule(preset="tiny", adapter=_lora(init="pissa"))
    with pytest.raises(ValueError, match=r"adapter.type: unknown value 'qlora'"):
        SubjectTuningModule(preset="tiny", adapter=AdapterConfig(type="qlora"))


# ------------------------------------------------------------------------------------------ resume


STEPS, KILL_AT = 4, 2


class _Kill(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == KILL_AT:
            raise RuntimeError("killed")


def _resume_module() -> SubjectTuningModule:
    return SubjectTuningModule(
        preset="tiny", optim=OptimConfig(lr=1e-2), prior=PriorConfig(source="online"), adapter=_lora(rank=4)
    )


def _state(m: SubjectTuningModule) -> dict[str, torch.Tensor]:
    out = {k: v.detach().clone() for k, v in m.adapter_tensors().items()}
    out["subject"] = m.subject_embedding.vectors.detach().clone()
    return out


def test_resume_after_a_kill_ends_bitwise_equal_with_lora(tmp_path, subject_dir, cache_dir):
    m = _resume_module()
    trainer(tmp_path / "full", STEPS).fit(m, _dm(subject_dir, cache_dir, batch_size=1, repeats=2))
    uninterrupted = _state(m)

    ckpt_dir = tmp_path / "ckpt"

    def ckpt():
        return ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=0)

    m = _resume_module()
    with pytest.raises(RuntimeError, match="killed"):
        trainer(tmp_path / "a", STEPS, callbacks=[ckpt(), _Kill()], enable_checkpointing=True).fit(
            m, _dm(subject_dir, cache_dir, batch_size=1, repeats=2)
        )
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert saved["global_step"] == KILL_AT
    assert all(
        "lora_" in k or k.startswith("subject_embedding.") for k in saved["state_dict"]
    )  # no base weight

    m = _resume_module()
    trainer(tmp_path / "b", STEPS, callbacks=[ckpt()], enable_checkpointing=True).fit(
        m, _dm(subject_dir, cache_dir, batch_size=1, repeats=2), ckpt_path=str(ckpt_dir / "last.ckpt")
    )
    assert m.global_step == STEPS
    resumed = _state(m)
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name


# ------------------------------------------------------------------------------------------ CLI


def test_cli_fit_and_sample_with_a_lora_adapter(tmp_path):
    run = tmp_path / "runs" / "lora"
    base = [
        "fit",
        "--config",
        str(REPO / "experiments" / "tiny.yaml"),
        "--run.root",
        str(tmp_path / "runs"),
        "--data.subject_dir",
        str(REPO / "experiments" / "assets" / "toy"),
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "2",
        "--model.adapter.type",
        "lora",
        "--model.adapter.rank",
        "4",
    ]
    main([*base, "--run.name", "lora"])
    adapter = run / "adapter.safetensors"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["adapter_bytes"] == adapter.stat().st_size
    assert read_adapter(adapter).meta["adapter"]["type"] == "lora"
    out = tmp_path / "samples"
    main(
        [
            "sample",
            "--adapter",
            str(adapter),
            "--prompts",
            '["a photo of <placeholder> toy"]',
            "--out_dir",
            str(out),
        ]
    )
    assert len(list(out.glob("*.png"))) == 1


# ------------------------------------------------------------------------------------------ memory


def test_memory_formula_matches_tensor_accounting_of_the_tiny_module():
    """Weights, gradients, AdamW states and the bank exactly; activations (autograd's saved tensors of the
    joint instance + prior pass) within 2%."""
    from varlit.bench import build_bench_module
    from varlit.tuning import memory

    adapter = _lora(rank=4)
    m, batch = build_bench_module("tiny", "bank", torch.device("cpu"), torch.float32, 2, adapter=adapter)
    m.student.cfg.attention = "per_scale"  # the GPU's attention layout, which the formula describes
    est = memory.finetune_memory(
        m.student.cfg,
        batch.schedule,
        2,
        adapter=adapter,
        frozen_bytes=4,
        compute_bytes=4,
        gradient_checkpointing=False,
        bank_samples=len(m._bank),
        vae_params=sum(p.numel() for p in m.vae.parameters()),
    )
    weights = [
        *m.student.parameters(),
        *m.student.buffers(),
        *m.subject_embedding.parameters(),
        *m.vae.parameters(),
    ]
    assert sum(t.nbytes for t in weights) == est.weights
    bank = sum(t.nbytes for t in vars(m._bank.samples).values())
    assert abs(bank - est.bank) <= 0.01 * est.bank
    m.training_step_for_bench(batch)
    assert sum(p.grad.nbytes for p in m.parameters() if p.grad is not None) == est.gradients
    states = m._standalone_optimizer.state.values()
    assert sum(v.nbytes for s in states for k, v in s.items() if k != "step") == est.optimizer

    def joint_forward():
        loss, _ = m.instance_loss(batch, None, self_correct_inputs=False)
        pb, text = m.prior_batch(batch, torch.Generator().manual_seed(0))
        return loss + m.prior_loss(pb, text, batch.schedule)[0]

    keep = memory.storages(
        [*m.parameters(), *m.buffers(), *vars(batch).values(), *vars(m._bank.samples).values()]
    )
    _, saved = memory.saved_tensor_bytes(joint_forward, keep)
    assert abs(saved / est.activations - 1) < 0.02, (saved, est.activations)


def test_memory_formula_matches_accounting_and_allocator_on_a_medium_random_model():
    from varlit.tuning import memory

    schedule = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)]  # 521 tokens
    r = memory.cpu_check(memory.MEDIUM, schedule, 2, _lora(rank=4))
    assert abs(r["saved_bytes"] / r["formula_activations"] - 1) < 0.02, r
    assert abs(r["peak_ckpt_bytes"] / r["formula_ckpt"] - 1) < 0.10, r  # the workspace term is an estimate


def test_2b_adapter_sizes_and_the_24gb_claim_come_from_the_formula():
    from varlit.models.presets import get_preset
    from varlit.tuning import memory

    p = get_preset("infinity-2b")
    sizes = memory.adapter_sizes(p.infinity)
    assert round(sizes["full CA+FFN"][0] / 1e9, 2) == 1.61  # known: 1.61 B params, 6.44 GB float32
    assert sizes["lora r16"][0] == 4 * sizes["lora r4"][0] and sizes["lora r4"][1] < 20e6
    est = memory.finetune_memory(
        p.infinity,
        p.schedule(1.0, "1M"),
        2,
        adapter=_lora(rank=16),
        gradient_checkpointing=True,
        bank_samples=64,
        vae_params=sum(t.numel() for t in p.build("meta")[1].parameters()),
    )
    assert est.total <= 24 * 2**30
