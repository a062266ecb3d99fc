"""Interleaved timing and its statistics: run order, medians, per-round ratios, one timed iteration.

The compared variants are timed in turns (:func:`interleaved_order`) and compared round by round
(:func:`paired_ratio`), so that machine load drifting during the benchmark affects all alike.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def interleaved_order(names: Sequence[str], repeats: int, warmup: int = 0) -> list[tuple[str, bool]]:
    """Order of runs for interleaved timing: ``warmup + repeats`` rounds, each running every name once.

    Round ``r`` starts at ``names[r % n]`` and continues cyclically (A B C, B C A, C A B, ...), so each
    variant runs equally often in every position of a round. Returns ``(name, is_warmup)`` pairs; the
    first ``warmup`` rounds are warm-up."""
    n = len(names)
    out: list[tuple[str, bool]] = []
    for r in range(warmup + repeats):
        for j in range(n):
            out.append((names[(r + j) % n], r < warmup))
    return out


def run_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int,
                    desc: str = "timing", warmup_runs: int = 0) -> dict[str, list[Any]]:
    """Call every ``fns[name]()`` (returning a timing) in :func:`interleaved_order` and return the timed
    (non warm-up) results per name. ``warmup`` counts warm-up rounds (every name once per round);
    ``warmup_runs`` adds single untimed calls before them, cycling through the names (for expensive
    runs where warming caches once is enough)."""
    from tqdm import tqdm

    names = list(fns)
    order = [(names[i % len(names)], True) for i in range(warmup_runs)]
    order += interleaved_order(names, repeats, warmup)
    times: dict[str, list[Any]] = {k: [] for k in fns}
    for name, is_warmup in tqdm(order, desc=desc, unit="run", leave=False, file=sys.stderr):
        t = fns[name]()
        if not is_warmup:
            times[name].append(t)
    return times


def median(values: Iterable[float]) -> float:
    """Median of ``values`` (mean of the two middle values for an even count)."""
    vals = list(values)
    if not vals:
        raise ValueError("median of an empty list")
    return float(statistics.median(vals))


def clock_medians(times: dict[str, list[dict[str, float]]], clock: str) -> dict[str, float]:
    """Median of the ``clock`` entry (``"cpu"`` or ``"wall"``) of every name's timings."""
    return {k: median(t[clock] for t in v) for k, v in times.items()}


def paired_ratio(times: dict[str, list[dict[str, float]]], name: str, reference: str, clock: str) -> float:
    """Median over rounds of ``time(name) / time(reference)`` measured in the same round.

    The i-th timed entry of every name comes from round i of :func:`run_interleaved`, so the two
    runs of a pair were taken seconds apart under the same machine load; the median of these per-round
    ratios is less disturbed by load that changes during the benchmark than the ratio of medians."""
    pairs = [a[clock] / b[clock] for a, b in zip(times[name], times[reference]) if b[clock] > 0]
    return median(pairs) if pairs else float("nan")


def ratio(value: float, reference: float) -> float:
    """``value / reference``; NaN when the reference is not positive."""
    return float(value / reference) if reference > 0 else float("nan")


def sync(device: str) -> None:
    """Wait for queued CUDA work (timings must cover the kernels, not their launch); no-op on CPU."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed_step(trainer: Any, batch: dict[str, Any], device: str) -> dict[str, float]:
    """Seconds of one ``trainer.train_step(batch)`` (device synchronised before and after):
    ``{"wall": elapsed, "cpu": CPU time of this process (all threads)}``."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    trainer.train_step(batch)
    sync(device)
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}
