"""How the cached views become training batches: a resumable loader, the batch order, the collate step.

The batch order is a pure function of (seed, rank, batch index), so a run resumed from a checkpoint draws
exactly the batches the uninterrupted run would have; `SubjectDataModule` counts the batches it used and
hands that count to `GroupedBatchSampler` (through `ResumableDataLoader`'s state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from varlit.data.batches import PromptBatch, SubjectBatch
from varlit.data.images import uint8_to_pm1
from varlit.data.precompute import ImageView, PromptFeatures, stack_prompts


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning treats as resumable (it has `state_dict` / `load_state_dict`).

    Its position is the data module's count of used batches, which also drives the batch sampler: a run
    resumed mid-epoch draws the batch the uninterrupted run would have drawn next."""

    position_owner: LightningDataModule | None = None

    def state_dict(self) -> dict[str, int]:
        return self.position_owner.state_dict() if self.position_owner is not None else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if self.position_owner is not None and state_dict:
            self.position_owner.load_state_dict(state_dict)


class ViewDataset(Dataset):
    """Index (view, class prompt) -> that pair; the collate function assembles the batch."""

    def __init__(self, num_views: int):
        self.num_views = num_views

    def __len__(self) -> int:
        return self.num_views

    def __getitem__(self, index: tuple[int, int]) -> tuple[int, int]:
        return index


class GroupedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (view index, class-prompt index), every batch drawn from a single aspect group.

    Batch k of a run (k = the trainer's global step when `step_fn` is given) is a pure function of
    (seed, rank, k): a run resumed from a checkpoint draws exactly the batches the uninterrupted run
    would have, whatever Lightning does with the interrupted epoch. Within a group, views are visited in
    shuffled passes (each view equally often; each group counts its own samples); the class prompt of each
    sample is uniform. A batch never holds the same view twice: where a batch straddles two passes, the
    next pass's head is reordered to avoid the views the previous pass's tail put in that batch (impossible
    only when a group has fewer views than the batch size; then views repeat as evenly as passes allow).
    """

    def __init__(
        self,
        groups: Sequence[Sequence[int]],
        batch_size: int,
        num_batches: int,
        num_class_prompts: int,
        seed: int = 0,
        step_fn: Callable[[], int] | None = None,
        rank: int = 0,
    ):
        if not groups or any(not g for g in groups):
            raise ValueError("every aspect group needs at least one view")
        self.groups = [list(g) for g in groups]
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.num_class_prompts = num_class_prompts
        self.seed = seed
        self.step_fn = step_fn
        self.rank = rank
        self.epoch = 0
        self._orders: dict[int, list[list[int]]] = {}  # group -> the view order of each pass so far
        self._picked: list[list[int]] = [[0] * len(self.groups)]  # [j][g]: batches of group g before batch j

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def _gen(self, *key: int) -> torch.Generator:
        value = self.seed
        for k in (self.rank, *key):
            value = (value * 1_000_003 + k + 1) % (2**62)
        return torch.Generator().manual_seed(value)

    def batch(self, k: int) -> list[tuple[int, int]]:
        """The k-th batch of the run."""
        sizes = torch.tensor([len(g) for g in self.groups], dtype=torch.float64)
        gen = self._gen(0, k)
        g = int(torch.multinomial(sizes, 1, generator=gen)) if len(self.groups) > 1 else 0
        group = self.groups[g]
        out = []
        start = self._batches_before(k, g) * self.batch_size  # samples this group gave before batch k
        for b in range(self.batch_size):
            i = start + b  # the group's sample counter; pass p visits every view of the group once
            p, pos = divmod(i, len(group))
            cls = int(torch.randint(self.num_class_prompts, (1,), generator=gen))
            out.append((group[self._pass_order(g, p)[pos]], cls))
        return out

    def _batches_before(self, k: int, g: int) -> int:
        """How many of batches 0..k-1 came from group g (replayed once from their seeds, then remembered)."""
        if len(self.groups) == 1:
            return k
        sizes = torch.tensor([len(grp) for grp in self.groups], dtype=torch.float64)
        while len(self._picked) <= k:
            j = len(self._picked) - 1
            counts = list(self._picked[j])
            counts[int(torch.multinomial(sizes, 1, generator=self._gen(0, j)))] += 1
            self._picked.append(counts)
        return self._picked[k][g]

    def _pass_order(self, g: int, p: int) -> list[int]:
        """The order of pass p over group g: a pure function of (seed, rank, g, p), computed pass by pass
        (and remembered) because each pass's head depends on the previous pass's tail."""
        orders = self._orders.setdefault(g, [])
        n, B = len(self.groups[g]), self.batch_size
        while len(orders) <= p:
            q = len(orders)
            order = torch.randperm(n, generator=self._gen(1, g, q)).tolist()
            tail = (q * n) % B  # samples of pass q - 1 in the batch where pass q starts
            if q > 0 and tail and B <= n:
                order = _avoid_head(order, set(orders[q - 1][n - tail :]), B - tail)
            orders.append(order)
        return orders[p]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = self.step_fn() if self.step_fn is not None else self.epoch * self.num_batches
        self.epoch += 1
        for j in range(self.num_batches):
            yield self.batch(start + j)


def _avoid_head(order: list[int], taken: set[int], head: int) -> list[int]:
    """`order` with none of `taken` in its first `head` places: each such view swaps with the first later
    view that is free (deterministic; still a permutation)."""
    out = list(order)
    for j in range(head):
        if out[j] in taken:
            t = next(t for t in range(head, len(out)) if out[t] not in taken)
            out[j], out[t] = out[t], out[j]
    return out


class Collate:
    """Turns [(view index, class index)] into a `SubjectBatch` from the cached tensors."""

    def __init__(
        self,
        views: list[ImageView],
        instance: PromptFeatures,
        classes: list[PromptFeatures],
        by_photo: dict[str, PromptFeatures] | None = None,
    ):
        self.views = views
        self.instance = instance
        self.classes = classes
        self.by_photo = by_photo or {}  # photo file name -> its own caption (photo_captions)

    def __call__(self, items: list[tuple[int, int]]) -> SubjectBatch:
        views = [self.views[v] for v, _ in items]
        schedule = views[0].schedule
        if any(v.schedule != schedule for v in views):
            raise ValueError("a batch mixes aspect ratios; use GroupedBatchSampler")
        instances = [self.by_photo.get(Path(v.path).name, self.instance) for v in views]
        instance_text, placeholder = stack_prompts(instances)
        class_feats = [self.classes[c] for _, c in items]
        class_text, _ = stack_prompts(class_feats)
        return SubjectBatch(
            pixels_B3HW=uint8_to_pm1(torch.stack([v.pixels_3HW for v in views])),
            z_BdHW=torch.stack([v.z_dhw for v in views]),
            bits_BLd=torch.stack([v.bits_Ld for v in views]),
            x_BLd_wo_prefix=torch.stack([v.x_Ld_wo_prefix for v in views]),
            instance_text=instance_text,
            instance_placeholder_B=placeholder,
            class_text=class_text,
            instance_prompts=[f.prompt for f in instances],
            class_prompts=[f.prompt for f in class_feats],
            schedule=schedule,
            vae_schedule=views[0].vae_schedule,
            paths=[str(v.path) for v in views],
        )


def identity_collate(batch: PromptBatch) -> PromptBatch:
    return batch
