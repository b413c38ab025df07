"""A benchmark report as text: the table `varlit bench` prints, and `summarize`, one line per measurement
across several reports with issue 7's targets (what bench/gpu.sh prints at the end)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path


def format_table(report: dict) -> str:
    """A plain-text summary of a `run_bench` report."""
    s, d, r = report["settings"], report["device"], report["results"]
    lines = [
        f"varlit bench: {s['preset']} {s['image_size'][0]}x{s['image_size'][1]} ({s['tokens']} tokens, "
        f"{s['scales']} scales), {s['dtype']} on {d['name']}, torch {d['torch']}",
        f"{'what':38s} {'median':>10s} {'per image':>10s} {'TFLOP/s':>8s} {'MFU':>6s} {'peak mem':>10s}",
    ]

    def mem(x: dict) -> str:
        if "peak_gb" in x:
            return f"{x['peak_gb']:.2f} GB"
        return f"rss {x['process_max_rss_gb']:.2f}G" if "process_max_rss_gb" in x else "-"

    def row(what: str, x: dict, per_image: float | None = None, tflops=None, mfu=None) -> str:
        pi = f"{per_image * 1e3:8.1f}ms" if per_image is not None else "-"
        tf = f"{tflops:8.3f}" if tflops is not None else "-"
        m = f"{100 * mfu:5.1f}%" if mfu is not None else "-"
        return f"{what:38s} {x['median_s'] * 1e3:8.1f}ms {pi:>10s} {tf:>8s} {m:>6s} {mem(x):>10s}"

    for x in r.get("sampling", []):
        lines.append(
            row(f"sample b={x['batch']} cfg (incl. decode)", x, x["per_image_s"], x["achieved_tflops"])
        )
    if "vae" in r:
        v = r["vae"]
        for name in ("encode", "decode"):
            lines.append(row(f"vae {name} b={v['batch']}", v[name], v[name]["per_image_s"]))
    for x in r.get("finetune", []):
        what = f"fine-tune step {x['prior_source']} b={x['batch']}"
        if x.get("status") != "ok":
            lines.append(f"{what:38s} {x.get('status')}: {x.get('reason', '')}")
            continue
        what += " ckpt" if x["gradient_checkpointing"] else ""
        lines.append(row(what, x, None, x["achieved_tflops"], x["mfu"]))
        lines.append(f"{'':38s} {x['flops']['total']:.4g} TFLOP per step")
    if "pretrain" in r:
        x = r["pretrain"]
        what = f"pretrain step b={x['batch']}" + (" compiled" if x["compiled"] else "")
        lines.append(row(what, x, x["median_s"] / x["batch"], x["achieved_tflops"]))
        lines.append(f"{'':38s} {x['images_per_s']:.1f} images/s, {x['flops']['total']:.4g} TFLOP per step")
    if "roofline" in r:
        peak = r["roofline"]
        lines.append(f"matmul {peak['shape']} {peak['dtype']}: {peak['tflops']:.3f} TFLOP/s (the roofline)")
        for name, xs in (("sample", r.get("sampling", [])), ("fine-tune", r.get("finetune", []))):
            for x in xs:
                if "roofline_fraction" in x:
                    lines.append(f"  {name} b={x['batch']}: {100 * x['roofline_fraction']:.1f}% of it")
        if "roofline_fraction" in r.get("pretrain", {}):
            lines.append(f"  pretrain: {100 * r['pretrain']['roofline_fraction']:.1f}% of it")
    return "\n".join(lines)


# Issue 7's targets for the 2B shape at 1024^2 on one H100 (random bf16 weights).
TARGETS = {
    "sample_per_image_s": 0.4,
    "finetune_step_s": 1.5,
    "finetune_peak_gb": 40.0,
    "lora_finetune_peak_gb": 24.0,  # issue 12: LoRA + bf16 frozen blocks + checkpointing on a 24 GB card
}


def _verdict(value: float, key: str, applies: bool) -> str:
    if not applies:
        return ""
    return f" [target <= {TARGETS[key]}: {'met' if value <= TARGETS[key] else 'MISSED'}]"


def _peak(x: dict) -> str:
    return f"{x['peak_gb']:.2f} GB" if "peak_gb" in x else "-"


def summarize(paths: Sequence[str | os.PathLike]) -> str:
    """One line per measurement across several `run_bench` reports (what bench/gpu.sh prints at the end).

    Issue 7's targets are checked only where they apply: the 2B shape at 1024^2 on a GPU.
    """
    lines = []
    for path in paths:
        rep = json.loads(Path(path).read_text())
        s, r = rep["settings"], rep["results"]
        targeted = s["preset"] == "infinity-2b" and s["pn"] == "1M" and rep["device"]["type"] == "cuda"

        tag = f"{Path(path).stem:22s} {s['preset']} {s['image_size'][0]}px"
        for x in r.get("sampling", []):
            v = _verdict(x["per_image_s"], "sample_per_image_s", targeted and x["batch"] == 1)
            lines.append(f"{tag} sample b={x['batch']}: {x['per_image_s']:.3f} s/image{v}, peak {_peak(x)}")
        if "vae" in r:
            v = r["vae"]
            lines.append(
                f"{tag} vae encode {v['encode']['median_s']:.3f} s, decode {v['decode']['median_s']:.3f} s"
            )
        lora = s.get("adapter") == "lora"
        for x in r.get("finetune", []):
            head = f"{tag} fine-tune {x['prior_source']} b={x['batch']}" + (
                f" lora r{s['lora_rank']}" if lora else ""
            )
            if x.get("status") != "ok":
                lines.append(f"{head}: {x['status']} {x.get('reason', '')}")
                continue
            applies = targeted and x["prior_source"] == "bank" and x["batch"] == 2
            mfu = f"{100 * x['mfu']:.1f}%" if x.get("mfu") is not None else "-"
            peak_key = "lora_finetune_peak_gb" if lora else "finetune_peak_gb"
            formula = f" (formula {x['formula_gb']:.2f} GB)" if x.get("formula_gb") is not None else ""
            lines.append(
                f"{head} ckpt={x['gradient_checkpointing']}: {x['median_s']:.3f} s/step"
                f"{_verdict(x['median_s'], 'finetune_step_s', applies and not lora)}, "
                f"{x['flops']['total']:.1f} TFLOP, MFU {mfu}, peak {_peak(x)}{formula}"
                f"{_verdict(x.get('peak_gb', 0.0), peak_key, applies)}"
            )
    return "\n".join(lines)
