"""One-line errors instead of tracebacks (issue 15): unusable output, run and cache folders (checked before any
work), too-small and unreadable photos, a placeholder cut off by the text limit, and outputs that follow the
umask."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import make_subject_photos
from tests.test_run_folder import _fails, _fit
from varlit.cli import main
from varlit.data.images import BadImageError
from varlit.data.subjects import load_subject_photos
from varlit.io import FolderError, atomic_write_text, check_writable_dir

REPO = Path(__file__).resolve().parents[1]


def test_regular_file_run_root_and_cache_dir_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    line = _fails(_fit(tmp_path, "r", 1), capsys)
    assert "run folder" in line and "is not a folder" in line and str(tmp_path / "runs") in line

    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / "cache").write_text("a file where the cache should be")
    line = _fails(_fit(ok, "r", 1), capsys)
    assert line == f"varlit fit: error: data.cache_dir {ok / 'cache'} is not a folder"
    assert not (ok / "runs").exists()


def test_sample_checks_its_out_dir_before_generating(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--prompts", '["a toy"]', "--out_dir", str(out / "x")])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == (
        f"varlit sample: error: out_dir {out / 'x'} is not a folder (its parent {out} is a file)"
    )
    assert "wrote" not in captured.out  # nothing was generated first


def test_a_read_only_folder_is_refused_by_name():
    folder = Path(tempfile.mkdtemp(prefix="varlit-ro-"))
    # the checkout may sit in a folder that user cannot read (mktemp -d is 0700): give it a copy
    pkg = Path(tempfile.mkdtemp(prefix="varlit-pkg-"))
    (pkg / "varlit").mkdir()
    (pkg / "varlit" / "__init__.py").write_text("")
    shutil.copy(REPO / "varlit" / "io.py", pkg / "varlit" / "io.py")
    for p in (pkg, pkg / "varlit", *(pkg / "varlit").iterdir()):
        p.chmod(0o755)
    try:
        folder.chmod(0o555)
        code = (
            "import sys; from varlit.io import check_writable_dir\n"
            "try:\n    check_writable_dir(sys.argv[1], 'run folder')\n"
            "except ValueError as e:\n    print(e)\n"
        )
        # root ignores permission bits: check as an unprivileged user, like a real user would run
        # (varlit.io needs only the standard library, so the system interpreter will do)
        root = os.getuid() == 0
        drop = (lambda: os.setuid(65534)) if root else None
        exe = shutil.which("python3", path="/usr/bin:/bin") if root else sys.executable
        proc = subprocess.run(
            [exe, "-c", code, str(folder / "runs" / "x")],
            cwd=pkg,
            env={**os.environ, "PYTHONPATH": str(pkg)},
            capture_output=True,
            text=True,
            preexec_fn=drop,
            timeout=120,
        )
        assert proc.stdout.strip() == (
            f"run folder {folder / 'runs' / 'x'} is not writable ({folder} is read-only for this user)"
        ), proc.stderr[-2000:]
    finally:
        folder.chmod(0o755)
        folder.rmdir()
        shutil.rmtree(pkg, ignore_errors=True)
    with pytest.raises(FolderError, match="is not a folder"):
        check_writable_dir(Path(__file__) / "sub", "run folder")


def test_a_1x1_photo_is_refused_as_too_small(tmp_path):
    folder = make_subject_photos(tmp_path / "toy", n=3)
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "tiny.png")
    with pytest.raises(
        BadImageError, match=r"tiny\.png: too small \(1x1\); a subject photo needs at least 32 px"
    ):
        load_subject_photos(folder)
    assert len(load_subject_photos(folder, on_bad_image="skip")) == 3


def test_an_unreadable_file_among_good_photos_is_reported(tmp_path, caplog):
    folder = make_subject_photos(tmp_path / "toy", n=3)
    (folder / "IMG_0001.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 100)
    (folder / "notes.txt").write_text("photos of my toy")  # not a photo: never reported
    with pytest.raises(BadImageError, match=r"IMG_0001\.heic: unsupported photo format '\.heic'"):
        load_subject_photos(folder)
    with caplog.at_level("WARNING"):
        assert len(load_subject_photos(folder, on_bad_image="skip")) == 3
    assert "IMG_0001.heic" in caplog.text and "notes.txt" not in caplog.text


def test_a_placeholder_past_the_text_limit_is_an_error():
    from varlit.pipeline import Pipeline
    from varlit.tuning.subject_embedding import PLACEHOLDER, SubjectEmbedding

    pipe = Pipeline.load("tiny", device="cpu", dtype="float32", init_seed=0)
    pipe.set_subject(SubjectEmbedding(2, pipe.model.cfg.text_channels), PLACEHOLDER)
    limit = pipe.text_encoder.max_length
    long = "a " * (limit + 5) + f"photo of {PLACEHOLDER} toy"
    with pytest.raises(ValueError, match=rf"lies past the text encoder's limit of {limit} tokens"):
        pipe.encode([long])
    pipe.encode([f"a photo of {PLACEHOLDER} toy"])  # within the limit: fine


def test_a_placeholder_past_the_limit_stops_the_token_cache(tiny_text_encoder):
    from varlit.data.precompute import _placeholder_masks
    from varlit.tuning.subject_embedding import PLACEHOLDER

    tiny_text_encoder.add_token(PLACEHOLDER)
    long = "a " * (tiny_text_encoder.max_length + 5) + f"photo of {PLACEHOLDER} toy"
    with pytest.raises(ValueError, match="would be cut off"):
        _placeholder_masks(tiny_text_encoder, [long], tiny_text_encoder.max_length)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
