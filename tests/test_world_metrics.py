"""World subjects as data (`world:<name>`, world prompts) and the world judge as a metric backbone
(`world-judge`) in SubjectMetrics, `varlit eval` and the metric callback. The judges here are random or
rigged (heads forced to one answer) so that every count is known; none needs the trained world weights."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import make_subject_photos
from varlit.callbacks.metrics import SubjectMetricsCallback
from varlit.cli import main
from varlit.data.datamodule import DEFAULT_VAL_PROMPTS_OBJECT, SubjectDataModule, fill_template
from varlit.data.subjects import SubjectError
from varlit.data.world_subjects import SUBJECT_PHOTOS_DIR
from varlit.eval import SubjectMetrics, SubjectSamples, load_images
from varlit.eval.backbones import BackboneLoadError
from varlit.eval.config import EvalConfig
from varlit.eval.judge import JUDGE_METRIC_NAMES, JudgeBackbone, judge_path, parse_world_prompt
from varlit.eval.runner import plan_subjects
from varlit.loggers import RunConfig
from varlit.world.judge import Judge, JudgeConfig
from varlit.world.scenes import CLASSES, CONTEXT_NAMES, CONTEXTS
from varlit.world.subjects import SUBJECT_NAMES, SUBJECTS

SMALL = JudgeConfig(width=8, embed_dim=16)


def save_judge(judge: Judge, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "judge.safetensors"
    save_file({k: v.detach().contiguous() for k, v in judge.state_dict().items()}, str(path))
    (folder / "judge.json").write_text(json.dumps({"config": asdict(judge.cfg)}))
    return path


def rigged_judge(subject: str, context: str, cls: str, margin: float = 6.0) -> Judge:
    """A judge whose heads always answer (subject, context, cls), with known probabilities."""
    torch.manual_seed(0)
    judge = Judge(SMALL)
    answers = {
        "subject": SUBJECT_NAMES.index(subject) + 1,
        "context": CONTEXT_NAMES.index(context),
        "cls": CLASSES.index(cls),
        "colour": 0,
    }
    with torch.no_grad():
        for head, k in answers.items():
            judge.heads[head].weight.zero_()
            judge.heads[head].bias.zero_()
            judge.heads[head].bias[k] = margin
    return judge.eval()


def forced_prob(head: str, margin: float = 6.0) -> float:
    n = {"context": len(CONTEXT_NAMES), "cls": len(CLASSES)}[head]
    return float(torch.tensor([margin] + [0.0] * (n - 1)).softmax(0)[0])


# ---- data: world:<name> ------------------------------------------------------------------------------------
def test_world_subject_resolves_to_the_shipped_folder_with_world_prompts(tmp_path):
    dm = SubjectDataModule(subject="world:polka_ball", cache_dir=str(tmp_path))
    dm.setup()
    assert dm.subject.folder == SUBJECT_PHOTOS_DIR / "polka_ball"
    assert (dm.subject.name, dm.subject.class_word, dm.subject.live) == ("polka_ball", "ball", False)
    assert len(dm.photos) == len(list(dm.subject.folder.glob("*.png"))) >= 3
    unseen = SUBJECTS["polka_ball"].unseen_contexts
    assert dm.val_prompts == [f"a photo of a <placeholder> ball {CONTEXTS[c]}" for c in unseen[:4]]
    assert dm.class_prompts == ["a photo of a ball"]  # the world's own bare caption
    # The same folder through subject_dir + class_word is the same world subject.
    same = SubjectDataModule(subject_dir=str(SUBJECT_PHOTOS_DIR / "polka_ball"), class_word="ball")
    same.setup()
    assert same.val_prompts == dm.val_prompts and same.class_prompts == dm.class_prompts
    assert [p.sha256 for p in same.photos] == [p.sha256 for p in dm.photos]
    # Explicit templates still win.
    own = SubjectDataModule(
        subject="world:emblem_box", val_prompts=["a {class}"], class_templates=["{class}"]
    )
    assert own.val_prompts == ["a box"] and own.class_prompts == ["box"]


def test_unknown_world_subject_lists_the_names():
    with pytest.raises(SubjectError, match="unknown world subject") as err:
        SubjectDataModule(subject="world:polka_bal").setup()
    for name in SUBJECT_NAMES:
        assert name in str(err.value)


def test_a_folder_that_is_not_a_world_subject_keeps_dreambench_prompts(tmp_path):
    make_subject_photos(tmp_path / "polka_ball", n=3, size=64)
    dm = SubjectDataModule(
        subject_dir=str(tmp_path / "polka_ball"), class_word="toy"
    )  # not the world's class
    assert dm.val_prompts == [fill_template(t, "toy") for t in DEFAULT_VAL_PROMPTS_OBJECT]
    assert dm.class_prompts == ["a photo of toy"]


# ---- prompt parsing -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("a photo of a ball on the beach", ("ball", "beach")),
        ("a photo of a red ball on a red carpet", ("ball", "carpet")),
        ("a house under water", ("house", "underwater")),
        ("a photo of a star", ("star", None)),
        ("a dog on the beach", (None, "beach")),
        ("a ball and a box at night", (None, "night")),  # two classes: ambiguous
        ("a photo of a balloon in the snow", (None, "snow")),  # whole words only
    ],
)
def test_parse_world_prompt(text, expected):
    assert parse_world_prompt(text) == expected


# ---- SubjectMetrics with the judge ---------------------------------------------------------------------------
def rigged_samples(subject: str | None, class_word: str | None = "ball") -> SubjectSamples:
    g = torch.Generator().manual_seed(1)
    prompts = ["a photo of a <placeholder> ball on the beach"] * 2 + [
        "a photo of a <placeholder> box in the snow"
    ] * 2
    return SubjectSamples(
        images=torch.rand(4, 3, 64, 64, generator=g) * 2 - 1,
        prompts=prompts,
        reference=torch.rand(3, 3, 64, 64, generator=g) * 2 - 1,
        class_images=torch.rand(3, 3, 64, 64, generator=g) * 2 - 1,
        subject=subject,
        class_word=class_word,
    )


def test_judge_metrics_count_what_the_heads_answer():
    judge = rigged_judge("polka_ball", "beach", "ball")
    metrics = SubjectMetrics(judge=JudgeBackbone(judge), eval_size=None)
    samples = rigged_samples("polka_ball")
    scores = metrics.score(samples)
    got = {k: v.item() for k, v in scores.judge.items()}
    assert list(got) == list(JUDGE_METRIC_NAMES) and scores.judge_subject == "polka_ball"
    assert got["judge_subject_rate"] == 1.0 and got["judge_leakage"] == 1.0
    assert (
        got["judge_context_acc"] == 0.5 and got["judge_class_acc"] == 0.5
    )  # beach/ball right, snow/box wrong
    p_ctx, p_cls = forced_prob("context"), forced_prob("cls")
    q_ctx, q_cls = (1 - p_ctx) / (len(CONTEXT_NAMES) - 1), (1 - p_cls) / (len(CLASSES) - 1)
    assert got["judge_context_prob"] == pytest.approx((p_ctx + q_ctx) / 2, abs=1e-6)
    assert got["judge_class_prob"] == pytest.approx((p_cls + q_cls) / 2, abs=1e-6)
    assert got["judge_class_prior_acc"] == 1.0
    # Similarities: mean cosine of the judge's normalised embeddings, per prompt then over prompts.
    with torch.no_grad():
        emb = lambda x: torch.nn.functional.normalize(judge(x)[0], dim=-1)  # noqa: E731
        ref, gen, cls = emb(samples.reference), emb(samples.images), emb(samples.class_images)
    per_prompt = [(ref @ gen[:2].T).mean(), (ref @ gen[2:].T).mean()]
    assert got["judge_subject_sim"] == pytest.approx(torch.stack(per_prompt).mean().item(), abs=1e-5)
    assert got["judge_leakage_sim"] == pytest.approx((ref @ cls.T).mean().item(), abs=1e-5)
    # Another subject: the judge never names it, nothing leaks; the class prior is another class.
    other = metrics.score(rigged_samples("emblem_box", class_word=None))
    assert other.judge["judge_subject_rate"].item() == 0.0 and other.judge["judge_leakage"].item() == 0.0
    assert other.judge["judge_class_prior_acc"].item() == 0.0  # emblem_box is a box; the judge says ball
    # No subject name: the judge's vote on the photos decides.
    assert metrics.score(rigged_samples(None)).judge_subject == "polka_ball"
    flat = scores.to_dict()
    row = flat["prompts"]["a photo of a <placeholder> box in the snow"]
    assert row["judge_context_acc"] == 0.0 and row["judge_subject_rate"] == 1.0 and row["dino"] is None


def test_prompts_without_a_world_context_skip_that_metric():
    metrics = SubjectMetrics(judge=JudgeBackbone(rigged_judge("polka_ball", "beach", "ball")), eval_size=None)
    s = rigged_samples("polka_ball")
    samples = SubjectSamples(
        s.images, ["a photo of a <placeholder> ball"] * 4, s.reference, subject="polka_ball"
    )
    scores = metrics.score(samples)
    assert "judge_context_acc" not in scores.judge and scores.judge["judge_class_acc"].item() == 1.0
    assert "judge_leakage" not in scores.judge  # no class-prompt samples
    assert scores.to_dict()["prompts"]["a photo of a <placeholder> ball"]["judge_context_prob"] is None


# ---- backbone ids and config --------------------------------------------------------------------------------
def test_world_judge_id_and_paths(tmp_path, monkeypatch):
    import varlit.models.presets as presets

    monkeypatch.setattr(presets, "WORLD_DIR", tmp_path / "weights")
    with pytest.raises(BackboneLoadError, match="world judge .*judge.safetensors is missing"):
        judge_path("world-judge")
    path = save_judge(Judge(SMALL), tmp_path / "weights")
    assert judge_path("world-judge") == path and judge_path(str(tmp_path / "weights")) == path
    loaded = JudgeBackbone.from_pretrained("world-judge")
    assert loaded.judge.cfg == SMALL  # judge.json beside the weights gives the config
    with pytest.raises(BackboneLoadError, match="not a file"):
        judge_path(str(tmp_path / "nope.safetensors"))
    (tmp_path / "bad").mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad" / "judge.safetensors"))
    with pytest.raises(BackboneLoadError, match="cannot load the judge"):
        JudgeBackbone.from_pretrained(str(tmp_path / "bad"))


def test_eval_config_needs_some_backbone_and_a_judge_suffices():
    EvalConfig(dino=None, clip=None, judge="world-judge").check()
    with pytest.raises(ValueError, match="eval.dino, eval.clip and eval.judge are all null"):
        EvalConfig(dino=None, clip=None).check()
    with pytest.raises(ValueError, match="all None"):
        SubjectMetricsCallback(dino=None, clip=None)


def test_eval_plan_uses_world_prompts_for_a_world_subject(tmp_path):
    cfg = EvalConfig(dino=None, clip=None, judge="world-judge", adapters="base")
    data = {"subject": "world:candy_ring", "cache_dir": str(tmp_path)}
    (plan,) = plan_subjects(cfg, data, RunConfig(root=str(tmp_path)), "tiny")
    assert plan.name == "candy_ring" and plan.class_word == "ring"
    unseen = SUBJECTS["candy_ring"].unseen_contexts  # the contexts its photos never show
    assert len(unseen) == len(CONTEXT_NAMES) - 3
    assert [p.prompt for p in plan.prompts] == [f"a photo of a ring {CONTEXTS[c]}" for c in unseen]
    assert plan.class_prompt == "a photo of a ring"
    assert all(parse_world_prompt(p.prompt) == ("ring", c) for p, c in zip(plan.prompts, unseen))


# ---- varlit eval end to end, judge only ----------------------------------------------------------------------
def test_varlit_eval_with_the_judge_only(tmp_path):
    path = save_judge(Judge(SMALL), tmp_path / "judge")
    out = tmp_path / "out"
    main(
        ["eval", "--model.preset", "tiny", "--data.subject", "world:polka_ball", "--data.cache_dir",
         str(tmp_path / "cache"), "--eval.adapters", "base", "--eval.seeds", "[0, 1]",
         "--eval.prompts", '["a photo of a {} on the beach", "a photo of a {} at night"]',
         "--eval.num_class_samples", "2", "--eval.batch_size", "2", "--eval.dino", "null", "--eval.clip", "null",
         "--eval.judge", str(path), "--eval.lpips", "false", "--eval.device", "cpu", "--eval.dtype", "float32",
         "--out", str(out)]
    )  # fmt: skip
    doc = json.loads((out / "metrics.json").read_text())
    entry = doc["subjects"]["polka_ball"]
    assert doc["backbones"]["judge"]["path"] == str(path) and doc["backbones"]["dino"] is None
    assert entry["judge_subject"] == "polka_ball" and entry["class_prompt"] == "a photo of a ball"
    assert len(list((out / "images" / "polka_ball" / "_class").glob("*.png"))) == 2
    # The report equals a direct computation on the saved files.
    metrics = SubjectMetrics(judge=JudgeBackbone.from_pretrained(str(path)))
    paths, prompts = [], []
    for prompt, row in entry["prompts"].items():
        paths += [out / row["dir"] / f"s{seed}.png" for seed in (0, 1)]
        prompts += [prompt, prompt]
    folder = out / "images" / "polka_ball"
    direct = metrics.score(
        SubjectSamples(
            images=load_images(paths),
            prompts=prompts,
            reference=load_images(sorted((folder / "_reference").glob("*.png"))),
            class_images=load_images(sorted((folder / "_class").glob("*.png"))),
            subject="polka_ball",
            class_word="ball",
        )
    )
    for name in JUDGE_METRIC_NAMES:
        assert entry["overall"][name] == pytest.approx(direct.judge[name].item(), abs=1e-5), name
        assert doc["overall"][name] == pytest.approx(entry["overall"][name]), name
    assert entry["overall"]["dino"] is None and entry["pres"] is None
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert set(JUDGE_METRIC_NAMES) <= set(header)
    md = (out / "metrics.md").read_text()
    assert "## World judge" in md and "polka_ball: judge per prompt" in md


# ---- the metric callback ---------------------------------------------------------------------------------------
class SampleSource(pl.LightningModule):
    def __init__(self, samples: SubjectSamples):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.samples = samples

    def training_step(self, batch, batch_idx):
        return (self.w * batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(1, 1)), batch_size=1)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(1, 1)), batch_size=1)

    def generate_validation_samples(self) -> SubjectSamples:
        return self.samples


def test_callback_logs_the_judge_metrics_without_dino_or_clip(tmp_path):
    path = save_judge(rigged_judge("polka_ball", "beach", "ball"), tmp_path)
    cb = SubjectMetricsCallback(dino=None, clip=None, judge=str(path), lpips=False, eval_size=None)
    samples = rigged_samples("polka_ball")
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[cb],
    )
    trainer.fit(SampleSource(samples))
    logged = trainer.callback_metrics
    expect = SubjectMetrics(judge=JudgeBackbone.from_pretrained(str(path)), eval_size=None).score(samples)
    for name in JUDGE_METRIC_NAMES:
        assert logged[f"val/{name}"].item() == pytest.approx(expect.judge[name].item(), abs=1e-6), name
    assert logged["val/judge_subject_rate"].item() == 1.0
    assert not any(k in logged for k in ("val/dino", "val/clip_i", "val/pres"))


class WithSubject(pl.LightningDataModule):
    """A data module that only carries a resolved subject (as SubjectDataModule does after setup)."""

    def __init__(self, subject):
        super().__init__()
        self.subject = subject

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(1, 1)), batch_size=1)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(1, 1)), batch_size=1)


def test_callback_takes_the_subject_from_the_data_module(tmp_path):
    """Samples without a subject name: the trainer's data module names it, not the judge's vote."""
    from varlit.data.subjects import Subject

    path = save_judge(rigged_judge("polka_ball", "beach", "ball"), tmp_path)
    cb = SubjectMetricsCallback(dino=None, clip=None, judge=str(path), lpips=False, eval_size=None)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[cb],
    )
    data = WithSubject(Subject("emblem_box", "box", SUBJECT_PHOTOS_DIR / "emblem_box"))
    trainer.fit(SampleSource(rigged_samples(None, class_word=None)), datamodule=data)
    assert cb.last_scores.judge_subject == "emblem_box"  # the judge alone would have voted polka_ball
    assert trainer.callback_metrics["val/judge_subject_rate"].item() == 0.0
    assert (
        trainer.callback_metrics["val/judge_class_prior_acc"].item() == 0.0
    )  # class box; the judge says ball
