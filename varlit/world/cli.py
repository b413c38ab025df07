"""`varlit world ...`: the steps of `make world` besides the two LightningCLI pretraining runs."""

from __future__ import annotations

USAGE = """usage: varlit world <step> [options]

steps:
  text-encoder   build the world's T5 and tokenizer (--out DIR)
  judge          train the judge on fresh renders (see `varlit world judge --help`)
  subjects       write the subject folders (--out DIR)
  export         pack VAE, transformer, judge and T5 into the shipped `world` preset
  report         measure the shipped world's quality (PSNR, judge accuracy, base-model recognition)
"""


def main(argv: list[str]) -> object:
    """`varlit world <step> ...` (dispatched by varlit.cli)."""
    from ..function_cli import run_function

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    step, rest = argv[0], argv[1:]
    if step == "text-encoder":
        from .text import main_build_text_encoder

        return run_function(main_build_text_encoder, rest, "varlit world text-encoder")
    if step == "judge":
        from .judge import train_judge

        return run_function(train_judge, rest, "varlit world judge")
    if step == "subjects":
        from .subjects import main_write_subjects

        return run_function(main_write_subjects, rest, "varlit world subjects")
    if step == "export":
        from .export import export_world

        return run_function(export_world, rest, "varlit world export")
    if step == "report":
        from .report import world_report

        return run_function(world_report, rest, "varlit world report")
    raise ValueError(
        f"unknown world step {step!r}; choose one of text-encoder, judge, subjects, export, report"
    )
