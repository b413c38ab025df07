"""A malicious pickle fed through every path that loads a file must never run.

The payload creates a marker file when unpickled (`open(marker, "w")`), so the test sees execution itself,
not just an error message: `--weights`, `--vae_weights`, `--adapter`, `--eval.adapters`, `--ckpt_path`
and the module's `weights`. Each must fail, and the marker must not exist afterwards.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import make_subject_photos
from varlit.cli import main
from varlit.models.loading import CheckpointError
from varlit.models.presets import get_preset

REPO = Path(__file__).resolve().parents[1]
PROMPTS_FILE = """subject_name,class
alpha,toy

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
]
"""


class _Payload:
    """Unpickling this calls open(marker, "w"): the marker file appears iff the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path) -> dict:
    marker = tmp_path / "PWNED"
    files = {}
    payload = _Payload(marker)
    files["pth"] = tmp_path / "evil.pth"
    torch.save({"head.weight": payload}, files["pth"])  # zip format, as torch.save writes it
    files["legacy"] = tmp_path / "evil_legacy.pth"
    files["legacy"].write_bytes(pickle.dumps({"vae": {"x": payload}}))  # a plain pickle stream
    files["adapter"] = tmp_path / "adapter.safetensors"
    files["adapter"].write_bytes(pickle.dumps(payload))
    files["ckpt"] = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"student.head.weight": payload}, "global_step": 1, "epoch": 0}, files["ckpt"])
    # the check of the check: unpickling these files really would create the marker
    with open(files["legacy"], "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    return {"marker": marker, **files}


@pytest.fixture(scope="module")
def good_weights(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    model, vae = get_preset("tiny").build()
    torch.save(model.state_dict(), folder / "model.pth")
    torch.save({"vae": vae.state_dict()}, folder / "vae.pth")
    return {"weights": str(folder / "model.pth"), "vae": str(folder / "vae.pth")}


def _sample(tmp_path: Path, capsys, culprit: Path, *args: str) -> None:
    """`varlit sample` fails, on the loader of `culprit` (its error line names the file)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--prompts", '["a photo of a toy"]', "--out_dir", str(tmp_path / "out"), *args])
    assert exc.value.code != 0
    assert culprit.name in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["pth", "legacy"])
def test_sample_weights_and_vae_weights(tmp_path, capsys, evil, good_weights, kind):
    _sample(tmp_path, capsys, evil[kind], "--weights", str(evil[kind]), "--vae_weights", good_weights["vae"])
    assert not evil["marker"].exists()
    _sample(
        tmp_path, capsys, evil[kind], "--weights", good_weights["weights"], "--vae_weights", str(evil[kind])
    )
    assert not evil["marker"].exists()


def test_sample_adapter(tmp_path, capsys, evil):
    _sample(tmp_path, capsys, evil["adapter"], "--adapter", str(evil["adapter"]))
    assert not evil["marker"].exists()
    renamed = evil["adapter"].with_name("adapter.pth")  # whatever the suffix says, nothing is unpickled
    renamed.write_bytes(evil["adapter"].read_bytes())
    _sample(tmp_path, capsys, renamed, "--adapter", str(renamed))
    assert not evil["marker"].exists()


def test_module_weights(evil, good_weights):
    from varlit.module import SubjectTuningModule

    for kind in ("pth", "legacy"):
        with pytest.raises(CheckpointError, match=evil[kind].name):
            SubjectTuningModule(preset="tiny", weights=str(evil[kind]), vae_weights=good_weights["vae"])
        assert not evil["marker"].exists()


def test_eval_adapters(tmp_path, capsys, evil):
    root = tmp_path / "dreambench"
    make_subject_photos(root / "alpha", n=3, size=64)
    (root / "prompts_and_classes.txt").write_text(PROMPTS_FILE)
    config = {
        "model": {"preset": "tiny"},
        "data": {"subject": "alpha", "dreambench_root": str(root), "cache_dir": str(tmp_path / "cache")},
        "eval": {
            "subjects": ["alpha"],
            "adapters": [str(evil["adapter"])],
            "prompts": ["a {} on the beach"],
            "seeds": [0],
            "dino": "tiny-dino",
            "clip": "tiny-clip",
            "device": "cpu",
            "dtype": "float32",
        },
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--config", str(path), "--out", str(tmp_path / "eval")])
    assert exc.value.code != 0
    assert "adapter.safetensors" in capsys.readouterr().err
    assert not evil["marker"].exists()


def test_fit_ckpt_path(tmp_path, capsys, evil):
    args = [
        "fit",
        "--config",
        str(REPO / "experiments" / "tiny.yaml"),
        "--run.root",
        str(tmp_path / "runs"),
        "--run.name",
        "evil",
        "--run.wandb",
        "false",
        "--data.subject_dir",
        str(REPO / "experiments" / "assets" / "toy"),
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.max_steps",
        "1",
        "--ckpt_path",
        str(evil["ckpt"]),
    ]
    # A one-line error is issue 15a's; here only that it fails and nothing was executed.
    with pytest.raises((SystemExit, pickle.UnpicklingError, CheckpointError)) as exc:
        main(args)
    if isinstance(exc.value, SystemExit):
        assert exc.value.code != 0
        assert "last.ckpt" in capsys.readouterr().err
    assert not evil["marker"].exists()
