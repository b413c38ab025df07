"""CPU thread policy: torch's intra-op threads only on cores that are idle.

torch starts one worker per core. When another process keeps some cores busy, the workers wait for each
other at every kernel and a small model runs several times slower than on fewer threads (see docs/getting-started.md,
"CPU threads"). varlit therefore sizes the pool from the load when it starts: the cores the 1-minute load
average leaves idle, at least one. An explicit choice always wins: `VARLIT_THREADS=N` (or `auto`), or
`OMP_NUM_THREADS` / `MKL_NUM_THREADS` set by the user.
"""

from __future__ import annotations

import os

THREADS_ENV = "VARLIT_THREADS"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """The cores the current load leaves idle (rounded), at least one."""
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, cores - round(load)))


def choose_threads(environ: dict[str, str] | None = None) -> int | None:
    """Threads to use, or None to leave torch's own choice (the user set OMP/MKL threads)."""
    env = os.environ if environ is None else environ
    value = env.get(THREADS_ENV, "auto").strip().lower()
    if value not in ("", "auto"):
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={value!r}: expected a positive integer or 'auto'") from None
        if n < 1:
            raise ValueError(f"{THREADS_ENV}={value!r}: expected a positive integer or 'auto'")
        return n
    if env.get("OMP_NUM_THREADS") or env.get("MKL_NUM_THREADS"):
        return None
    return auto_threads()


def apply_thread_policy(environ: dict[str, str] | None = None) -> int:
    """Set torch's intra-op threads by the policy above; returns the number in effect."""
    import torch

    n = choose_threads(environ)
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()
