"""The ablation sweeps as data: each variant is a name plus the `varlit fit` overrides that make it.

Every variant sets all the fields its ablation is about, so the result does not depend on what the base
config happens to say about them (e.g. the layer variants null `freeze.trainable`, the scale variants null
`scale_weights.values`). Two placeholders are filled in per run, because their value depends on it:

- `{run_dir}`: the run's folder (a prior bank kept next to the run that built it);
- `{scale_ramp}`: an explicit per-scale weight list as long as the run's schedule (13 scales for the 2B at
  1M, 7 for the tiny preset), falling linearly from 1.0 at the coarsest scale to 0.25 at the finest;
- `{num_coarse}`: ARBooth's "coarse" scale count carried over to the run's schedule: the release weights
  the first 8 of the 2B's 13 scales fully, so a schedule of n scales gets round(8 n / 13) (3 of the world's
  5, 4 of tiny's 7). A fixed 8 would make the world's `arbooth` arm identical to `uniform`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PLACEHOLDERS: tuple[str, ...] = ("{run_dir}", "{scale_ramp}", "{num_coarse}")
ARBOOTH_COARSE, ARBOOTH_SCALES = 8, 13  # the released weights: first 8 of the 2B's 13 scales at 1.0
RAMP_FIRST, RAMP_LAST = 1.0, 0.25


@dataclass(frozen=True)
class Variant:
    """One arm of an ablation: a folder/tag-safe name and the fit overrides (`--key=value`) that make it."""

    name: str
    overrides: tuple[str, ...]
    note: str = ""

    def uses(self, placeholder: str) -> bool:
        return any(placeholder in o for o in self.overrides)

    def render(self, values: Mapping[str, str]) -> list[str]:
        """The overrides with placeholders filled from `values` ({'{run_dir}': ..., ...})."""
        out = []
        for o in self.overrides:
            for key in PLACEHOLDERS:
                if key in o:
                    if key not in values:
                        raise ValueError(f"variant {self.name!r}: no value for placeholder {key} in {o!r}")
                    o = o.replace(key, values[key])
            out.append(o)
        return out


@dataclass(frozen=True)
class Sweep:
    """A named ablation: its runs form one wandb group, one folder `<root>/<name>` and one summary."""

    name: str
    description: str
    variants: tuple[Variant, ...]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ValueError(
            f"sweep {self.name!r} has no variant {name!r}; its variants are {', '.join(self.names)}"
        )

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]


def scale_ramp(num_scales: int) -> str:
    """The `{scale_ramp}` value: a JSON list of `num_scales` weights from 1.0 down to 0.25."""
    if num_scales < 1:
        raise ValueError(f"a schedule needs at least one scale, got {num_scales}")
    if num_scales == 1:
        return f"[{RAMP_FIRST}]"
    step = (RAMP_FIRST - RAMP_LAST) / (num_scales - 1)
    return "[" + ", ".join(f"{RAMP_FIRST - i * step:.4g}" for i in range(num_scales)) + "]"


def num_coarse(num_scales: int) -> int:
    """The `{num_coarse}` value: ARBooth's 8-of-13 coarse share of a schedule of `num_scales` scales."""
    if num_scales < 1:
        raise ValueError(f"a schedule needs at least one scale, got {num_scales}")
    return max(1, round(ARBOOTH_COARSE * num_scales / ARBOOTH_SCALES))


def _layers(name: str, preset: str, note: str) -> Variant:
    return Variant(name, (f"--model.freeze.preset={preset}", "--model.freeze.trainable=null"), note)


def _scales(name: str, kind: str, note: str, *extra: str) -> Variant:
    values = () if kind == "explicit" else ("--model.scale_weights.values=null",)
    return Variant(name, (f"--model.scale_weights.kind={kind}", *values, *extra), note)


def _prior(name: str, loss: str, weight: float, source: str, note: str, *extra: str) -> Variant:
    return Variant(
        name,
        (
            f"--model.prior.loss={loss}",
            f"--model.prior.weight={weight}",
            f"--model.prior.source={source}",
            *extra,
        ),
        note,
    )


def _adapter(name: str, kind: str, rank: int, note: str) -> Variant:
    """CA+FFN of every block, trained in full or through LoRA of `rank` (alpha = rank: scaling 1)."""
    return Variant(
        name,
        (
            "--model.freeze.preset=arbooth",
            "--model.freeze.trainable=null",
            f"--model.adapter.type={kind}",
            f"--model.adapter.rank={rank}",
            "--model.adapter.alpha=null",
            "--model.adapter.rank_per_kind=null",
        ),
        note,
    )


# The rare token of the identifier arm, DreamBooth's choice; on the world's word-level tokenizer any word the
# captions never use is one unknown token, so "sks" is as rare there as it is to T5.
RARE_TOKEN = "sks"


def _identifier(name: str, learned: bool, note: str) -> Variant:
    """The subject as learned vectors at `<placeholder>` (ARBooth) or as a rare word (DreamBooth), the
    rest of the config (captions, prior, layers) unchanged."""
    if learned:
        overrides = ("--data.instance_prompt=null", "--model.freeze.subject_embedding=true")
    else:
        overrides = (
            f"--data.instance_prompt=a photo of a {RARE_TOKEN} {{class}}",
            "--model.freeze.subject_embedding=false",
        )
    return Variant(name, overrides, note)


def _captions(name: str, captions: str | None, note: str) -> Variant:
    """Each photo's own caption (a file in the subject folder) or one prompt for every photo."""
    return Variant(
        name,
        (f"--data.photo_captions={captions or 'null'}", "--data.caption_from_filename=false"),
        note,
    )


SWEEPS: dict[str, Sweep] = {
    s.name: s
    for s in (
        Sweep(
            "ablate-layers",
            "which transformer layers are fine-tuned (the freeze mask)",
            (
                _layers("all", "all-layers", "the paper's all layers: SA, CA and FFN of every block"),
                _layers("sa", "sa", "self-attention of every block"),
                _layers("ca", "ca", "cross-attention of every block"),
                _layers("ffn", "ffn", "feed-forward of every block"),
                _layers("ca+ffn", "arbooth", "ARBooth's choice: CA and FFN of every block"),
                _layers("early-half", "early-half", "CA+FFN of the first half of the blocks"),
                _layers("late-half", "late-half", "CA+FFN of the last half of the blocks"),
                _layers(
                    "every-tensor",
                    "every-tensor",
                    "every transformer parameter: blocks, embeddings, text projection, AdaLN, head",
                ),
            ),
        ),
        Sweep(
            "ablate-scales",
            "the per-scale weights of the instance loss",
            (
                _scales("uniform", "uniform", "every scale 1"),
                _scales(
                    "arbooth",
                    "arbooth",
                    "first 8 of 13 scales 1.0 (the same share of shorter schedules), the rest 0.5 (release)",
                    "--model.scale_weights.num_coarse={num_coarse}",
                    "--model.scale_weights.coarse=1.0",
                    "--model.scale_weights.fine=0.5",
                ),
                _scales(
                    "inverse_sqrt_area", "inverse_sqrt_area", "sqrt(area_last / area_s), mean token weight 1"
                ),
                _scales(
                    "explicit-ramp",
                    "explicit",
                    "explicit list: 1.0 at the coarsest scale falling linearly to 0.25 at the finest",
                    "--model.scale_weights.values={scale_ramp}",
                ),
            ),
        ),
        Sweep(
            "ablate-distill",
            "prior distillation: none, soft with several lambdas, hard, online teacher vs prior bank",
            (
                _prior("none", "none", 0.0, "online", "no prior loss"),
                _prior("soft-0.1", "soft", 0.1, "online", "soft KL, lambda 0.1, teacher samples online"),
                _prior("soft-0.5", "soft", 0.5, "online", "soft KL, lambda 0.5 (paper), online"),
                _prior("soft-1", "soft", 1.0, "online", "soft KL, lambda 1, online"),
                _prior("hard", "hard", 0.5, "online", "CE on the teacher's argmax bits, lambda 0.5, online"),
                _prior(
                    "soft-0.5-bank",
                    "soft",
                    0.5,
                    "bank",
                    "soft KL, lambda 0.5, teacher samples drawn once into a prior bank",
                    "--model.prior.bank.root={run_dir}/prior_bank",
                ),
            ),
        ),
        Sweep(
            "ablate-adapter",
            "full CA+FFN fine-tuning against peft LoRA adapters on the same layers (issue 12)",
            (
                _adapter("full", "full", 16, "ARBooth: every CA and FFN tensor trained"),
                _adapter("lora-r4", "lora", 4, "LoRA rank 4 on every CA and FFN linear layer"),
                _adapter("lora-r16", "lora", 16, "LoRA rank 16 on every CA and FFN linear layer"),
                _adapter("lora-r64", "lora", 64, "LoRA rank 64 on every CA and FFN linear layer"),
            ),
        ),
        Sweep(
            "ablate-captions",
            "own photos without captions: one prompt for every photo against each photo's context named",
            (
                _captions("captions", "captions.txt", "each photo's caption names its context (world.yaml)"),
                _captions("single-prompt", None, "ARBooth's single prompt: what own photos get by default"),
            ),
        ),
        Sweep(
            "ablate-identifier",
            "the subject's name in the prompt: learned vectors (ARBooth) against a rare token (DreamBooth)",
            (
                _identifier("learned", True, "4 learned vectors at <placeholder> (the config's embedding)"),
                _identifier(
                    "rare-token",
                    False,
                    f"DreamBooth's identifier: 'a photo of a {RARE_TOKEN} {{class}}', no learned vectors "
                    f"({RARE_TOKEN} also stands for <placeholder> in captions and prompts)",
                ),
            ),
        ),
    )
}


def get_sweep(name: str) -> Sweep:
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; choose one of {', '.join(SWEEPS)}")
    return SWEEPS[name]
