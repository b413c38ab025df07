"""Put a sweep run's evaluation into wandb, next to its training run.

`varlit eval` writes files only; a sweep also wants the scores on the dashboard. After each evaluation the
runner logs one small wandb run: same name, group (the sweep) and tag (the variant) as the fit, job type
`sweep-eval`, its summary holding `eval/dino`, `eval/clip_i`, `eval/clip_t`, `eval/pres`, `eval/div` and the
cost columns (`trainable_params`, `sec_per_step`, ...), its config the sweep/subject/variant. Group by tag
(or by config.variant) and chart `eval/*` to compare the variants. Offline without an API key, like fit.

Under a wandb agent (WANDB_SWEEP_ID set) nothing is logged here: a second run would join the agent's
sweep; the agent's run is the fit itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

JOB_TYPE = "sweep-eval"


def log_eval_run(
    run_dir: Path,
    name: str,
    project: str,
    group: str,
    variant: str,
    subject: str,
    scores: dict[str, float | None],
    costs: dict[str, float | None],
) -> Path | None:
    """Log the run's scores; returns the wandb folder, or None when wandb is missing or an agent owns the env."""
    if os.environ.get("WANDB_SWEEP_ID"):
        return None
    try:
        import wandb
    except ImportError:
        return None
    from varlit.loggers import wandb_offline

    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"sweep": group, "subject": subject, "variant": variant}
    run = wandb.init(
        project=project,
        name=name,
        group=group,
        tags=[variant],
        job_type=JOB_TYPE,
        dir=str(out),
        config=config,
        mode="offline" if wandb_offline() else "online",
        settings=wandb.Settings(silent=True),
    )
    try:
        summary = {f"eval/{k}": v for k, v in scores.items() if v is not None}
        summary.update({k: v for k, v in costs.items() if v is not None})
        run.summary.update(summary)
    finally:
        run.finish()
    return out / "wandb"
