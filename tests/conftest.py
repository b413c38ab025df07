"""Shared fixtures: CPU only, offline, tiny models built in-process, tmp output folders."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

from varlit.threads import apply_thread_policy  # noqa: E402

apply_thread_policy()  # the CLI's policy: idle cores only (one thread on a loaded 2-core machine)


@pytest.fixture(scope="session")
def tiny_text_encoder():
    from varlit.models.text import build_tiny_text_encoder

    return build_tiny_text_encoder(max_length=32)


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The tiny preset with random weights (seeded) and the tiny T5; shared, treat as read-only."""
    from varlit.pipeline import Pipeline

    return Pipeline.load("tiny", device="cpu", dtype="float32", init_seed=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _close_wandb_runs():
    """In-process CLI runs leave wandb's global run open (a real process would exit); close it."""
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
