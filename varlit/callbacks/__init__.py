"""Lightning callbacks: subject adapters, sample grids, per-scale losses and subject metrics."""
