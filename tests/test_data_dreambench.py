"""DreamBench: parsing prompts_and_classes.txt, the layouts, subject selection and the downloader.

Uses the real set at $VARLIT_DREAMBENCH_DIR (default ../shared/dreambench next to the repo) when present,
and always also a mini DreamBench synthesised here, so the tests pass on a machine without it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from varlit.data import dreambench
from varlit.data.dreambench import (
    DreamBenchError,
    dataset_dir,
    download_dreambench,
    dreambench_subject,
    load_spec,
    parse_prompts_file,
)

REAL_ROOT = Path(
    os.environ.get(dreambench.DREAMBENCH_ENV, Path(__file__).resolve().parents[1] / "../shared/dreambench")
)
needs_real = pytest.mark.skipif(
    not (REAL_ROOT / "prompts_and_classes.txt").is_file(), reason="no real DreamBench here"
)

MINI_CLASSES = {"dog": "dog", "teapot": "teapot", "bear_plushie": "stuffed animal"}
_OBJECT = ["in the jungle", "on the beach", "with a city in the background"]
_LIVE = ["in the jungle", "wearing a red hat", "in a chef outfit"]


def write_prompts_file(path: Path, classes: dict[str, str]) -> None:
    """A prompts file in the exact official format (CSV classes, then two Python-ish template lists)."""

    def block(suffixes: list[str]) -> str:
        lines = [f"'a {{0}} {{1}} {s}'.format(unique_token, class_token)," for s in suffixes]
        lines[-1] = lines[-1].rstrip(",")
        return "prompt_list = [\n" + "\n".join(lines) + "\n]\n"

    csv = "\n".join(f"{s},{c}" for s, c in classes.items())
    path.write_text(
        f"Classes\n\nsubject_name,class\n{csv}\n\nPrompts\n\nObject Prompts\n\n{block(_OBJECT)}\n"
        f"Live Subject Prompts\n\n{block(_LIVE)}"
    )


def make_mini_dreambench(folder: Path, photos: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_prompts_file(folder / "prompts_and_classes.txt", MINI_CLASSES)
    rng = np.random.default_rng(0)
    for subject in MINI_CLASSES:
        (folder / subject).mkdir()
        for i in range(photos):
            arr = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / subject / f"{i:02d}.jpg")
    return folder


def test_parse_synthesised_prompts_file(tmp_path):
    root = make_mini_dreambench(tmp_path / "db")
    spec = parse_prompts_file(root / "prompts_and_classes.txt")
    assert spec.classes == MINI_CLASSES
    assert spec.object_templates == tuple(f"a {{0}} {{1}} {s}" for s in _OBJECT)
    assert spec.is_live("dog") and not spec.is_live("teapot")
    assert spec.prompts("dog")[1] == "a <placeholder> dog wearing a red hat"
    assert (
        spec.prompts("bear_plushie", token="sks")[2] == "a sks stuffed animal with a city in the background"
    )


@needs_real
def test_parse_real_prompts_file():
    spec = load_spec(REAL_ROOT)
    assert len(spec.classes) == 30
    assert len(spec.object_templates) == 25 and len(spec.live_templates) == 25
    live = sorted(s for s in spec.classes if spec.is_live(s))
    assert live == ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
    assert spec.classes["bear_plushie"] == "stuffed animal" and spec.classes["pink_sunglasses"] == "glasses"
    assert "a <placeholder> dog in a purple wizard outfit" in spec.prompts("dog")
    assert "a <placeholder> teapot on top of a mirror" in spec.prompts("teapot")
    for name in spec.classes:  # every subject is selectable by name and has photos
        subject = dreambench_subject(REAL_ROOT, name)
        assert subject.class_word == spec.classes[name] and any(subject.folder.glob("*.jpg"))


def test_both_layouts_are_found(tmp_path):
    flat = make_mini_dreambench(tmp_path / "flat")
    official = make_mini_dreambench(tmp_path / "repo" / "dataset")
    assert dataset_dir(flat) == flat
    assert dataset_dir(tmp_path / "repo") == official
    with pytest.raises(DreamBenchError, match="no DreamBench at .*varlit data dreambench --out DIR"):
        dataset_dir(tmp_path / "nothing")


def test_subject_selection_and_unknown_names(tmp_path):
    root = make_mini_dreambench(tmp_path / "db")
    dog = dreambench_subject(root, "dog")
    assert (dog.name, dog.class_word, dog.live, dog.folder) == ("dog", "dog", True, root / "dog")
    assert not dreambench_subject(root, "teapot").live
    assert not dreambench_subject(root, "dog", live=False).live
    with pytest.raises(DreamBenchError) as info:
        dreambench_subject(root, "dragon")
    assert "unknown DreamBench subject 'dragon'" in str(info.value)
    assert "valid names: bear_plushie, dog, teapot" in str(info.value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda t: t.replace("teapot,teapot", "teapot;teapot"),
            r"prompts_and_classes.txt:\d+: expected 'subject,class'",
        ),
        (lambda t: t.replace(".format(unique_token, class_token),", ",", 1), r"cannot read prompt template"),
        (lambda t: t.split("Live Subject Prompts")[0], r"no live subject prompts section"),
    ],
)
def test_malformed_prompts_file_is_an_error_naming_it(tmp_path, mutate, message):
    root = make_mini_dreambench(tmp_path / "db")
    path = root / "prompts_and_classes.txt"
    path.write_text(mutate(path.read_text()))
    with pytest.raises(DreamBenchError, match=message):
        parse_prompts_file(path)


def _official_zip(tmp_path: Path) -> Path:
    """A zip laid out like GitHub's archive of google/dreambooth."""
    src = make_mini_dreambench(tmp_path / "src" / "dreambooth-main" / "dataset")
    (src.parent / "README.md").write_text("DreamBooth dataset")
    archive = tmp_path / "main.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted((tmp_path / "src").rglob("*")):
            z.write(p, p.relative_to(tmp_path / "src"))
    return archive


def test_download_unpacks_the_official_archive(tmp_path):
    archive = _official_zip(tmp_path)
    out = tmp_path / "out"
    assert dreambench.main(["--out", str(out), "--url", archive.as_uri()]) == 0
    assert dataset_dir(out) == out / "dataset"
    spec = load_spec(out)
    assert spec.classes == MINI_CLASSES
    assert len(list((out / "dataset" / "dog").glob("*.jpg"))) == 3
    assert [p.name for p in out.iterdir()] == ["dataset"]  # no temporary folders left behind
    # A second call keeps what is there; a broken archive URL is not even touched.
    assert download_dreambench(out, url="file:///does/not/exist.zip") == out / "dataset"


def test_download_offline_gives_a_clear_error(tmp_path, capsys):
    out = tmp_path / "out"
    url = "http://127.0.0.1:9/dreambooth.zip"  # nothing listens on the discard port
    with pytest.raises(
        DreamBenchError, match=r"could not download DreamBench from http://127.0.0.1:9/.*offline"
    ):
        download_dreambench(out, url=url, timeout=5)
    assert dreambench.main(["--out", str(out), "--url", url, "--timeout", "5"]) == 1
    assert "Are you offline?" in capsys.readouterr().err
    assert not (out / "dataset").exists()


def test_download_rejects_archives_that_are_not_dreambench(tmp_path):
    not_zip = tmp_path / "page.zip"
    not_zip.write_text("<html>rate limited</html>")
    with pytest.raises(DreamBenchError, match="is not a zip archive"):
        download_dreambench(tmp_path / "a", url=not_zip.as_uri())
    escaping = tmp_path / "evil.zip"
    with zipfile.ZipFile(escaping, "w") as z:
        z.writestr("../../evil.txt", "x")
    with pytest.raises(DreamBenchError, match="outside"):
        download_dreambench(tmp_path / "b", url=escaping.as_uri())
    assert not (tmp_path / "evil.txt").exists()
