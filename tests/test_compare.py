"""`varlit compare BEFORE AFTER`: two evaluation folders as a before/after table and one side-by-side picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from varlit.cli import main

TEMPLATES = ["a photo of a {} in the snow", "a photo of a {} at night"]


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((64, 64, 3), colour, dtype=np.uint8)).save(path)


def _eval_folder(
    root: Path, rate: float, context: float, colour: tuple[int, int, int], placeholder: bool
) -> Path:
    subject, prompts = "twotone_cup", {}
    for t in TEMPLATES:
        slug = t.format("cup").replace(" ", "_")
        for k in range(3):
            _png(root / "images" / subject / slug / f"s{k}.png", colour)
        text = t.format("<placeholder> cup" if placeholder else "cup")
        prompts[text] = {"template": t, "dir": f"images/{subject}/{slug}", "judge_subject_rate": rate}
    for i in range(2):
        _png(root / "images" / subject / "_class" / f"c{i:03d}.png", colour)
        _png(root / "images" / subject / "_reference" / f"r{i:03d}.png", (250, 250, 250))
    overall = {"dino": None, "judge_subject_rate": rate, "judge_context_acc": context, "judge_leakage": 0.0}
    data = {
        "overall": overall,
        "subjects": {
            subject: {"prompts": prompts, "class_prompt": "a photo of a cup", "num_class_samples": 2}
        },
        "settings": {"seeds": [0, 1, 2]},
    }
    (root / "metrics.json").write_text(json.dumps(data))
    return root


def test_compare_writes_the_table_and_the_side_by_side_picture(tmp_path, capsys):
    before = _eval_folder(tmp_path / "base", 0.0, 1.0, (200, 0, 0), placeholder=False)
    after = _eval_folder(tmp_path / "tuned", 0.75, 0.5, (0, 0, 200), placeholder=True)
    main(
        [
            "compare",
            "--before",
            str(before),
            "--after",
            str(after),
            "--out",
            str(tmp_path / "cmp"),
            "--per_row",
            "3",
        ]
    )
    printed = capsys.readouterr().out
    assert "| subject recognition (judge names the subject) | ↑ | 0.0 % | 75.0 % |" in printed
    assert "| context accuracy (prompt's context drawn) | ↑ | 100.0 % | 50.0 % |" in printed
    assert "| leakage (bare class prompt drawn as the subject) | ↓ | 0.0 % | 0.0 % |" in printed
    assert "DINO" not in printed  # absent from both folders: no row
    n = len(TEMPLATES)  # which samples the scores rest on (a fit's validation scores others)
    assert f"before: {n} prompts x 3 seeds = {3 * n} samples, 2 class-prompt samples" in printed
    assert "not on a fit's validation samples" in printed
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    rate = next(r for r in rows if r["metric"] == "judge_subject_rate")
    assert rate["before"] == 0.0 and rate["after"] == 0.75 and rate["change"] == pytest.approx(0.75)
    assert (tmp_path / "cmp" / "compare.md").read_text().count("\n| ") == 4  # header + 3 measures

    picture = np.asarray(Image.open(tmp_path / "cmp" / "compare.png").convert("RGB"))
    # Rows: the photos, one per prompt, the bare class prompt; each prompt row is 3 before + gap + 3 after.
    tile, pad, cap = 128, 4, 24
    assert picture.shape[0] == 4 * (tile + cap + pad) + pad
    y = pad + 1 * (tile + cap + pad) + tile // 2  # the first prompt row
    x0 = 190 + pad
    reds = [x0 + c * (tile + pad) + tile // 2 for c in range(3)]
    blues = [x0 + c * (tile + pad) + tile // 2 for c in range(4, 7)]
    assert all(tuple(picture[y, x]) == (200, 0, 0) for x in reds)  # before: the base model's samples
    assert all(tuple(picture[y, x]) == (0, 0, 200) for x in blues)  # after: the tuned samples
    assert tuple(picture[y, x0 + 3 * (tile + pad) + tile // 2]) == (255, 255, 255)  # the gap


def test_compare_errors_name_the_folder(tmp_path):
    after = _eval_folder(tmp_path / "tuned", 0.5, 0.5, (0, 0, 200), placeholder=True)
    with pytest.raises(SystemExit):
        main(["compare", "--before", str(tmp_path / "missing"), "--after", str(after)])
    other = _eval_folder(tmp_path / "other", 0.5, 0.5, (0, 0, 200), placeholder=True)
    data = json.loads((other / "metrics.json").read_text())
    data["subjects"] = {"polka_ball": data["subjects"]["twotone_cup"]}
    (other / "metrics.json").write_text(json.dumps(data))
    from varlit.eval.compare import compare

    with pytest.raises(ValueError, match="evaluate different subjects"):
        compare(str(other), str(after))
    with pytest.raises(FileNotFoundError, match=r"missing/metrics.json: not found"):
        compare(str(tmp_path / "missing"), str(after))
