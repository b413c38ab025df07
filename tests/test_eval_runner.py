"""`varlit eval` end to end on the tiny preset with tiny-dino / tiny-clip, a synthesised DreamBench root and
two adapters written in the test: output files, metrics against a direct SubjectMetrics computation,
resume, adapter swapping on one base model, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import make_subject_photos
from varlit.cli import main
from varlit.eval import ClipBackbone, DinoBackbone, SubjectMetrics, SubjectSamples, load_images
from varlit.eval.config import EvalConfig
from varlit.eval.prompts import DREAMBENCH_LIVE_TEMPLATES, DREAMBENCH_OBJECT_TEMPLATES, make_prompt
from varlit.eval.tiny_backbones import build_tiny_clip_tokenizer
from varlit.models.sampler import to_uint8
from varlit.pipeline import Pipeline
from varlit.tuning.adapter import save_adapter

SUBJECTS = {"alpha": "toy", "beta": "dog"}  # beta is live (DreamBench guesses live from cat / dog)
TEMPLATES = ["a {} on the beach", "a red {}"]
SEEDS = [0, 1]

PROMPTS_FILE = """subject_name,class
alpha,toy
beta,dog

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a red {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} wearing a red hat'.format(unique_token, class_token)
]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_pipeline) -> dict:
    """A DreamBench root with two subjects, one adapter per subject, and a config naming them."""
    tmp = tmp_path_factory.mktemp("eval")
    root = tmp / "dreambench"
    root.mkdir()
    (root / "prompts_and_classes.txt").write_text(PROMPTS_FILE)
    for i, name in enumerate(SUBJECTS):
        make_subject_photos(root / name, n=3, size=96, seed=40 * i)
    runs = tmp / "runs"
    params = dict(tiny_pipeline.model.named_parameters())
    # Different tensor sets per subject: a swap that forgot to restore the base would leave alpha's in beta.
    for i, ((name, cls), part) in enumerate(zip(SUBJECTS.items(), (".ca.", ".ffn."))):
        g = torch.Generator().manual_seed(10 + i)
        tuned = {k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in params.items() if part in k}
        vectors = torch.randn(4, tiny_pipeline.text_encoder.channels, generator=g)
        save_adapter(
            runs / name / "adapter.safetensors",
            tuned,
            vectors,
            {"preset": "tiny", "placeholder": "<placeholder>", "class_word": cls},
        )
    config = {
        "seed_everything": 0,
        "run": {"name": "alpha", "root": str(runs), "wandb": False},
        "trainer": {"accelerator": "cpu", "max_steps": 3},
        "model": {"preset": "tiny", "prior": {"loss": "soft"}, "optim": {"lr": 0.001}},
        "data": {"subject": "alpha", "dreambench_root": str(root), "cache_dir": str(tmp / "cache")},
        "eval": {
            "subjects": list(SUBJECTS),
            "adapters": "{root}/{subject}/adapter.safetensors",
            "prompts": TEMPLATES,
            "seeds": SEEDS,
            "num_class_samples": 2,
            "batch_size": 2,
            "dino": "tiny-dino",
            "clip": "tiny-clip",
            "device": "cpu",
            "dtype": "float32",
        },
    }
    path = tmp / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"tmp": tmp, "config": str(path), "runs": runs}


@pytest.fixture
def count_calls(monkeypatch):
    """Counts Pipeline.load and Pipeline.generate calls (the real methods still run)."""
    calls = {"load": 0, "generate": 0}
    load, generate = Pipeline.load.__func__, Pipeline.generate

    def counted_load(cls, *args, **kwargs):
        calls["load"] += 1
        return load(cls, *args, **kwargs)

    def counted_generate(self, *args, **kwargs):
        calls["generate"] += 1
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "load", classmethod(counted_load))
    monkeypatch.setattr(Pipeline, "generate", counted_generate)
    return calls


def run_eval(world: dict, out: Path, *extra: str) -> dict:
    main(["eval", "--config", world["config"], "--out", str(out), *extra])
    return json.loads((out / "metrics.json").read_text())


def pngs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}


@pytest.fixture(scope="module")
def both(world, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("both")
    return out, run_eval(world, out)


def direct_scores(out: Path, doc: dict, name: str) -> dict:
    """Recompute one subject's metrics from its saved files with a SubjectMetrics built here."""
    metrics = SubjectMetrics(
        DinoBackbone.from_pretrained("tiny-dino"), ClipBackbone.from_pretrained("tiny-clip")
    )
    subject = doc["subjects"][name]
    paths, prompts, texts = [], [], []
    for prompt, row in subject["prompts"].items():
        for seed in SEEDS:
            paths.append(out / row["dir"] / f"s{seed}.png")
            prompts.append(prompt)
            texts.append(row["clip_t_text"])
    folder = out / "images" / name
    samples = SubjectSamples(
        images=load_images(paths),
        prompts=prompts,
        reference=load_images(sorted((folder / "_reference").glob("*.png"))),
        class_images=load_images(sorted((folder / "_class").glob("*.png"))),
        texts=texts,
    )
    return metrics.score(samples).to_dict()


def test_eval_writes_reports_that_match_a_direct_computation(world, both):
    out, doc = both
    for f in ("metrics.json", "metrics.csv", "metrics.md", "grids/alpha.png", "grids/beta.png"):
        assert (out / f).is_file(), f
    images = pngs(out)
    per_subject = len(TEMPLATES) * len(SEEDS) + 2 + 3  # samples, class samples, reference photos
    assert len(images) == 2 * per_subject
    assert (out / "images/beta/a_dog_on_the_beach/s1.png").is_file()
    with Image.open(out / "grids/alpha.png") as grid:  # rows = prompts, columns = seeds, 256 px tiles
        band = 15  # one caption line ("<prompt> | seed <s>") under every tile
        assert grid.size == (2 * 256 + 2, len(TEMPLATES) * (256 + band) + 2)

    assert set(doc["subjects"]) == set(SUBJECTS)
    for name in SUBJECTS:
        got, want = doc["subjects"][name], direct_scores(out, doc, name)
        assert list(got["prompts"]) == [
            f"a <placeholder> {SUBJECTS[name]} on the beach",
            f"a red <placeholder> {SUBJECTS[name]}",
        ]
        for prompt, row in got["prompts"].items():
            assert row["n"] == len(SEEDS)
            assert row["clip_t_text"] == prompt.replace("<placeholder> ", "")
            for k in ("dino", "clip_i", "clip_t"):
                assert row[k] == pytest.approx(want["prompts"][prompt][k], rel=1e-5, abs=1e-6)
            assert row["div"] is None  # no LPIPS offline here: skipped, with a reason
        for k in ("dino", "clip_i", "clip_t", "pres"):
            assert got["overall"][k] == pytest.approx(want["overall"][k], rel=1e-5, abs=1e-6)
        assert got["pres"] == got["overall"]["pres"]
        assert got["div_skipped"].startswith("DIV skipped")
    for k in ("dino", "clip_i", "clip_t", "pres"):
        mean = np.mean([doc["subjects"][n]["overall"][k] for n in SUBJECTS])
        assert doc["overall"][k] == pytest.approx(mean, rel=1e-6)

    # labelled as random / tiny everywhere
    assert doc["backbones"]["dino"] == {
        "id": "tiny-dino",
        "random_init": True,
        "note": doc["backbones"]["dino"]["note"],
    }
    assert doc["backbones"]["clip"]["random_init"] and doc["model"]["random_init"]
    assert any("tiny-dino" in n for n in doc["notes"])
    md = (out / "metrics.md").read_text()
    assert "tiny-dino (random)" in md and "## alpha" in md and "## beta" in md
    assert "`a red <placeholder> toy`" in md
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("subject,class_word,prompt,template,clip_t_text,n,dino,clip_i,clip_t,div,pres")
    assert len(rows) == 1 + len(SUBJECTS) * len(TEMPLATES)
    assert "tiny-clip (random)" in rows[1]
    assert doc["timing"]["generation"]["images"] == 2 * (len(TEMPLATES) * len(SEEDS) + 2)


def test_samples_are_the_adapted_model_s(world, both):
    """The saved samples are what the base model + that subject's adapter draws for the prompt batch and seed,
    and the adapter matters (the base model draws something else)."""
    out, doc = both
    pipe = Pipeline.load("tiny", device="cpu", dtype="float32")
    prompts = list(doc["subjects"]["beta"]["prompts"])
    saved = np.stack(
        [
            np.asarray(Image.open(out / "images/beta" / d / "s1.png"))
            for d in ("a_dog_on_the_beach", "a_red_dog")
        ]
    )
    pipe.load_adapter(world["runs"] / "beta" / "adapter.safetensors")
    tuned = to_uint8(pipe.generate(prompts, EvalConfig().sampling, seed=1).images_B3HW).numpy()
    pipe.restore_base()
    base = to_uint8(pipe.generate(prompts, EvalConfig().sampling, seed=1).images_B3HW).numpy()
    assert np.array_equal(saved, tuned)
    assert not np.array_equal(saved, base)


def test_rerun_keeps_images_and_a_killed_run_resumes_identically(world, both, count_calls, tmp_path, capsys):
    first_out, first = both
    out = tmp_path / "resume"
    shutil.copytree(first_out, out)
    before = pngs(out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("s*.png")}

    doc = run_eval(world, out)
    assert count_calls["generate"] == 0
    assert doc["timing"]["generation"]["images"] == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert doc["subjects"] == first["subjects"]
    assert "0 images sampled" in capsys.readouterr().out

    # a run killed mid-way: one sample missing, one class sample truncated
    (out / "images/alpha/a_red_toy/s1.png").unlink()
    truncated = out / "images/beta/_class/c001.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    doc = run_eval(world, out)
    assert count_calls["generate"] == 2  # only the two chunks that lost an image
    assert doc["timing"]["generation"]["written"] == 2
    assert pngs(out) == before  # same images as the uninterrupted run
    assert doc["subjects"] == first["subjects"]


def test_changed_settings_regenerate(world, both, count_calls, tmp_path):
    first_out, _ = both
    out = tmp_path / "changed"
    shutil.copytree(first_out, out)
    run_eval(world, out, "--eval.sampling.tau", "0.7", "--eval.subjects", "[alpha]")
    assert count_calls["generate"] == len(SEEDS) + 1  # every chunk of alpha, plus its class prompt
    settings = json.loads((out / "images/alpha/a_red_toy/settings.json").read_text())
    assert settings["sampling"]["tau"] == 0.7


def test_adapter_swap_on_one_base_equals_each_subject_alone(world, both, count_calls, tmp_path):
    out_both, doc_both = both
    images_both = pngs(out_both)
    for name in SUBJECTS:
        out = tmp_path / name
        doc = run_eval(world, out, "--eval.subjects", f"[{name}]")
        assert doc["subjects"][name] == doc_both["subjects"][name]
        alone = pngs(out)
        assert alone == {k: v for k, v in images_both.items() if k.startswith(f"images/{name}/")}
    assert count_calls["load"] == 2  # one base model per run, whatever the number of subjects


def test_one_base_model_for_many_subjects(world, count_calls, tmp_path):
    run_eval(world, tmp_path / "out", "--eval.seeds", "[5]", "--eval.num_class_samples", "0")
    assert count_calls["load"] == 1
    assert count_calls["generate"] == len(SUBJECTS)  # one chunk (2 prompts) per subject, no class prompt


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--eval.subjects", "[nosuch]"], "unknown DreamBench subject 'nosuch'"),
        (["--eval.adapters", "{root}/missing/{subject}.safetensors"], "missing/alpha.safetensors"),
        (["--eval.prompts", "[]"], "eval.prompts: empty prompt list"),
        (["--eval.prompts", "[a photo]"], "'a photo'"),
        (["--eval.adapters", "[a, b, c]"], "eval.adapters lists 3 paths for 2 subjects"),
        (["--eval.dino", "/no/such/dino"], "'/no/such/dino' is not a folder"),
    ],
)
def test_bad_input_exits_with_one_clear_line(world, tmp_path, capsys, count_calls, args, needle):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--config", world["config"], "--out", str(tmp_path / "bad"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("varlit eval: error:") and needle in err[0]
    assert count_calls["load"] == 0  # checked before any model is loaded


def test_base_adapter_drops_the_placeholder(world, tmp_path):
    doc = run_eval(
        world,
        tmp_path / "base",
        "--eval.subjects",
        "[beta]",
        "--eval.adapters",
        "base",
        "--eval.seeds",
        "[0]",
        "--eval.num_class_samples",
        "0",
        "--eval.clip_t_text",
        "arbooth_compat",
    )
    subject = doc["subjects"]["beta"]
    assert subject["adapter"] is None and subject["pres"] is None
    assert list(subject["prompts"]) == ["a dog on the beach", "a red dog"]
    assert [r["clip_t_text"] for r in subject["prompts"].values()] == TEMPLATES  # the literal template


def test_prompt_filling_and_default_lists():
    p = make_prompt("a {} on the beach", "dog")
    assert (p.prompt, p.clip_text) == ("a <placeholder> dog on the beach", "a dog on the beach")
    assert make_prompt("a {} on the beach", "dog", "arbooth_compat").clip_text == "a {} on the beach"
    assert make_prompt("a <placeholder> {class} in the snow", "cat").clip_text == "a cat in the snow"
    assert len(DREAMBENCH_OBJECT_TEMPLATES) == len(DREAMBENCH_LIVE_TEMPLATES) == 25


def test_default_lists_match_the_official_dreambench_prompts():
    shared = Path(__file__).resolve().parents[2] / "shared" / "dreambench" / "prompts_and_classes.txt"
    if not shared.is_file():
        pytest.skip(f"the official DreamBench prompt file is not on this machine ({shared})")
    from varlit.data.dreambench import parse_prompts_file

    spec = parse_prompts_file(shared)
    assert [t.replace("{0} {1}", "{}") for t in spec.object_templates] == list(DREAMBENCH_OBJECT_TEMPLATES)
    assert [t.replace("{0} {1}", "{}") for t in spec.live_templates] == list(DREAMBENCH_LIVE_TEMPLATES)


def test_tiny_clip_tokenizer_is_deterministic_and_reads_prompts():
    a, b = build_tiny_clip_tokenizer(), build_tiny_clip_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    ids = a("a dog on the beach")["input_ids"]
    assert ids[0] == a.bos_token_id and ids[-1] == a.eos_token_id
    assert a.unk_token_id not in ids[1:-1] and len(ids) == 7  # whole words learned by the BPE


def test_pres_samples_the_bare_class_prompt_with_the_adapter(world, tmp_path, monkeypatch):
    """PRES compares the tuned model's samples of "a photo of {class}" (no placeholder) with the photos."""
    calls: list[tuple[list[str], bool]] = []
    generate = Pipeline.generate

    def recording_generate(self, prompts, *args, **kwargs):
        calls.append((list(prompts), self.subject is not None and bool(self.base_backup)))
        return generate(self, prompts, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "generate", recording_generate)
    doc = run_eval(world, tmp_path / "pres", "--eval.subjects", "[alpha]", "--eval.seeds", "[0]")
    bare = [(p, tuned) for p, tuned in calls if not any("<placeholder>" in q for q in p)]
    assert bare == [(["a photo of toy", "a photo of toy"], True)]  # 2 class samples, adapter applied
    subject_prompts = [q for p, _ in calls for q in p if "<placeholder>" in q]
    assert subject_prompts and all("<placeholder> toy" in q for q in subject_prompts)
    assert len(list((tmp_path / "pres" / "images" / "alpha" / "_class").glob("*.png"))) == 2
    assert doc["subjects"]["alpha"]["pres"] is not None
