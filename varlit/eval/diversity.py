"""DIV: mean pairwise perceptual distance among the samples of one prompt (higher = more diverse).

The reference uses LPIPS (AlexNet, `lpips` package) on the squashed [-1, 1] 256 x 256 images, over every
unordered pair. Both LPIPS implementations (torchmetrics' and the `lpips` package) build their backbone
with torchvision and fetch its ImageNet weights from download.pytorch.org. varlit depends on neither, so
`build_lpips` only returns a distance when torchvision is importable *and* the AlexNet weights are already
in the torch hub cache; otherwise it returns the reason DIV is skipped and the metric reports None.
Any callable (a, b) -> per-pair distance can stand in (`mean_pairwise_distance` takes one).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

# torchvision weight enums of the LPIPS backbones
_TV_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}

#: (a_P3HW, b_P3HW) -> distances [P]
PairwiseDistance = Callable[[Tensor, Tensor], Tensor]


def mean_pairwise_distance(
    images_N3HW: Tensor, distance: PairwiseDistance, batch_size: int = 32
) -> Tensor | None:
    """Mean of distance(x_i, x_j) over all pairs i < j, in batches of pairs; None with fewer than 2 images."""
    n = images_N3HW.shape[0]
    if n < 2:
        return None
    i, j = torch.triu_indices(n, n, offset=1, device=images_N3HW.device)
    total = images_N3HW.new_zeros((), dtype=torch.float32)
    for start in range(0, i.numel(), batch_size):
        a, b = i[start : start + batch_size], j[start : start + batch_size]
        d = distance(images_N3HW[a], images_N3HW[b]).float().reshape(-1)
        if d.numel() != a.numel():
            raise ValueError(f"pairwise distance returned {d.numel()} values for {a.numel()} pairs")
        total = total + d.sum()
    return total / i.numel()


class LpipsDistance(nn.Module):
    """Per-pair LPIPS of torchmetrics on [-1, 1] images (needs torchvision and cached AlexNet weights)."""

    def __init__(self, net_type: str = "alex"):
        super().__init__()
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.lpips = LearnedPerceptualImagePatchSimilarity(
            net_type=net_type, reduction="none", normalize=False
        )
        self.lpips.eval().requires_grad_(False)

    def forward(self, a_P3HW: Tensor, b_P3HW: Tensor) -> Tensor:
        d = self.lpips(a_P3HW.float(), b_P3HW.float())
        self.lpips.reset()  # the metric keeps every score it has seen; we only want this batch's
        return d


def lpips_unavailable_reason(net_type: str = "alex") -> str | None:
    """Why LPIPS cannot be built offline here, or None when it can."""
    if net_type not in _TV_WEIGHTS:
        raise ValueError(f"LPIPS net_type must be one of {sorted(_TV_WEIGHTS)}, got {net_type!r}")
    if importlib.util.find_spec("torchvision") is None:
        return "LPIPS needs torchvision (its AlexNet backbone), which varlit does not install"
    import torchvision

    url = getattr(torchvision.models, _TV_WEIGHTS[net_type]).DEFAULT.url
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.isfile(cached):
        return (
            f"LPIPS needs the {net_type} ImageNet weights in the torch hub cache ({cached}); none are there"
        )
    return None


def build_lpips(net_type: str = "alex") -> tuple[LpipsDistance | None, str | None]:
    """(distance, None) when LPIPS can run without a network, else (None, "DIV skipped: <reason>")."""
    reason = lpips_unavailable_reason(net_type)
    if reason is not None:
        return None, f"DIV skipped: {reason}"
    return LpipsDistance(net_type), None
