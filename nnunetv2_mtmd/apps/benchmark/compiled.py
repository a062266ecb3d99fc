"""``--compile``: the training iteration with ``torch.compile``d networks, stock and multi-domain alike.

nnU-Net compiles the network only (``nnUNetTrainer.initialize``: ``self.network = torch.compile(self.network)``,
on CUDA, unless ``nnUNet_compile`` says no), never the loss; the measurement does the same on every
device (inductor runs on CPU too) so that the compiled ratios compare like with like. Per trainer it
records the compile time (first call minus the median compiled step), the number of graphs the
backend compiled over the whole measurement (1 = no graph break and no recompilation for the fixed
batch) and the median compiled step; the ratios are paired per round against the compiled stock
trainer, as the eager ones are. The networks are eager again afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from nnunetv2_mtmd.apps.benchmark.settings import SCHEME_TRAINERS, STOCK
from nnunetv2_mtmd.apps.benchmark.timing import clock_medians, paired_ratio, run_interleaved, timed_step

logger = logging.getLogger(__name__)


def counting_backend(name: str, counter: list[int]) -> Callable[..., Any]:
    """A ``torch.compile`` backend that compiles with backend ``name`` and counts the graphs it gets."""
    import torch._dynamo

    inner = torch._dynamo.lookup_backend(name)

    def backend(gm: Any, example_inputs: Any) -> Any:
        counter[0] += 1
        return inner(gm, example_inputs)

    return backend


def measure_compiled_train_steps(trainers: dict[str, Any], batch: dict[str, Any], device: str, backend: str,
                                 repeats: int, warmup: int, clock: str) -> dict[str, Any]:
    """Compile every trainer's network, time its ``train_step`` interleaved with the others, restore eager.

    Returns ``{"backend", "compile_s": {key: s}, "graphs": {key: n}, "train_step_s": {key: median},
    "train_step_ratio": {scheme: ratio to compiled stock}, "raw_times_s": ...}``."""
    import torch
    import torch._dynamo

    cfg = torch._dynamo.config
    # every trainer compiles the same forward code object: more entries than dynamo keeps by default
    old_limits = cfg.cache_size_limit, cfg.accumulated_cache_size_limit
    cfg.cache_size_limit = max(cfg.cache_size_limit, 8 * len(trainers))
    cfg.accumulated_cache_size_limit = max(cfg.accumulated_cache_size_limit, 16 * len(trainers))
    counters = {k: [0] for k in trainers}
    first: dict[str, float] = {}
    try:
        for key, tr in trainers.items():
            tr.network = torch.compile(tr.network, backend=counting_backend(backend, counters[key]))
            t0 = time.perf_counter()
            timed_step(tr, batch, device)
            first[key] = time.perf_counter() - t0
            logger.info("      compiled %s: first step %.1f s, %d graph(s)", key, first[key], counters[key][0])
        times = run_interleaved({k: (lambda t=t, b=batch: timed_step(t, b, device)) for k, t in trainers.items()},
                                repeats, warmup, desc="compiled train steps")
    finally:
        for tr in trainers.values():
            tr.network = getattr(tr.network, "_orig_mod", tr.network)
        cfg.cache_size_limit, cfg.accumulated_cache_size_limit = old_limits
    medians = clock_medians(times, "wall")
    return {
        "backend": backend,
        "compile_s": {k: round(max(first[k] - medians[k], 0.0), 2) for k in trainers},
        "graphs": {k: c[0] for k, c in counters.items()},
        "train_step_s": clock_medians(times, clock),
        "train_step_ratio": {k: paired_ratio(times, k, STOCK, clock) for k in SCHEME_TRAINERS},
        "raw_times_s": times,
    }
