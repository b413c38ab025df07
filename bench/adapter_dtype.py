"""How much of a fine-tune does bf16 storage of the tuned tensors lose? (docs/adapters.md, "Adapter size")

    python bench/adapter_dtype.py runs/tiny/adapter.safetensors     # an adapter of the tiny preset

Prints the relative weight change of the adapter, the bf16 rounding error relative to that change, and the
fraction of sampled bits that differ between the float32 adapter and its bf16 rounding (3 prompts x 4 seeds).
"""

import sys

import torch

from varlit.models.sampler import SamplingConfig
from varlit.pipeline import Pipeline
from varlit.tuning.adapter import read_adapter

path = sys.argv[1]
a = read_adapter(path)
pipe = Pipeline.load("tiny", device="cpu", dtype="float32")
params = dict(pipe.model.named_parameters())
base = {k: params[k].detach().clone() for k in a.tensors}
err2 = delta2 = w2 = 0.0
for k, v in a.tensors.items():
    w = v.float()
    d = w - base[k]
    e = w.bfloat16().float() - w
    err2 += float(e.norm() ** 2)
    delta2 += float(d.norm() ** 2)
    w2 += float(base[k].norm() ** 2)
print(f"relative change |W_ft-W0|/|W0| = {(delta2 / w2) ** 0.5:.4g}")
print(f"bf16 rounding error / |W_ft-W0| = {(err2 / delta2) ** 0.5:.4g}")
prompts = [
    "a photo of <placeholder> toy on the beach",
    "a photo of <placeholder> toy in the snow",
    "a red <placeholder> toy",
]
cfg = SamplingConfig(cfg=4.0, tau=0.5)


def run():
    return [pipe.generate(prompts, cfg, seed=s) for s in range(4)]


base_out = run()
pipe.load_adapter(path)
fp32_out = run()
with torch.no_grad():
    for k, v in a.tensors.items():
        params[k].copy_(v.bfloat16().float())
bf16_out = run()


def bits_diff(x, y):
    return sum(float((p.bits_BLd != q.bits_BLd).float().mean()) for p, q in zip(x, y)) / len(x)


def pix(x, y):
    return max(float((p.images_B3HW - q.images_B3HW).abs().max()) for p, q in zip(x, y))


print(f"bits differing, base vs fp32 adapter: {bits_diff(base_out, fp32_out):.4f}")
print(f"bits differing, fp32 vs bf16 adapter: {bits_diff(fp32_out, bf16_out):.4f}")
print(f"max pixel diff fp32 vs bf16 adapter: {pix(fp32_out, bf16_out):.4f} (range 2)")
