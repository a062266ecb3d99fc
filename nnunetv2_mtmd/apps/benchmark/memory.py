"""Peak memory of one training iteration (:func:`measure_peak_memory`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def peak_live_bytes(events: Sequence[tuple[int, int, int]], start: int, end: int) -> int:
    """Peak, during ``[start, end]``, of the bytes allocated since the first event and not yet freed.

    ``events``: ``(time, ptr, size)`` allocator records in time order, ``size > 0`` an allocation of
    the block at ``ptr``, ``size < 0`` a release. Releases of blocks not allocated in ``events``
    (they existed before recording began) are ignored, so the result only counts memory the
    recorded code allocated. The value at ``start`` counts as well (what was live when the window
    opened). Returns 0 if nothing was live in the window."""
    live: dict[int, int] = {}
    total = 0
    peak = 0
    opened = False
    for t, ptr, size in events:
        if t > end:
            break
        if t >= start and not opened:
            peak, opened = max(peak, total), True
        if size > 0:
            total += size - live.get(ptr, 0)
            live[ptr] = size
        elif ptr in live:
            total -= live.pop(ptr)
        if t >= start:
            peak = max(peak, total)
    if not opened:
        peak = total
    return peak


def _tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (None entries ignored)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def resident_bytes(trainer: Any, batch: dict[str, Any]) -> int:
    """Bytes alive before an iteration and not released by it: network parameters and buffers,
    optimizer state, the frozen MJAP autoencoder (if any) and the batch."""
    import torch

    tensors: list[Any] = list(trainer.network.parameters()) + list(trainer.network.buffers())
    for state in trainer.optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    ae = getattr(trainer, "autoencoder", None)
    if ae is not None:
        tensors += list(ae.parameters()) + list(ae.buffers())
    tensors.append(batch["data"])
    tensors += batch["target"] if isinstance(batch["target"], list) else [batch["target"]]
    return _tensor_bytes(tensors)


def measure_peak_memory(trainer: Any, batch: dict[str, Any], device: str) -> dict[str, int]:
    """Peak allocated tensor memory during one training iteration (bytes).

    * CUDA: ``torch.cuda.max_memory_allocated`` over one ``train_step`` (after
      ``reset_peak_memory_stats``): everything allocated, parameters and optimizer state included.
    * CPU (no allocator statistics): two iterations run under ``torch.profiler`` with
      ``profile_memory=True``, which records every CPU allocation and release (pointer, bytes).
      ``working`` = the peak, during the second iteration, of the bytes allocated since the first
      iteration began and not yet released (:func:`peak_live_bytes`): activations, gradients,
      temporaries, and whatever the first iteration left alive for the next (gradients, stored
      features). ``peak = resident + working`` with ``resident`` (parameters, buffers, optimizer
      state, batch) from :func:`resident_bytes`. Exact for tensor memory, deterministic (no RSS
      noise); memory outside torch's CPU allocator is not counted.

    Returns ``{"peak": ..., "resident": ..., "working": ...}``.
    """
    import torch

    if device == "cuda":
        trainer.train_step(batch)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        trainer.train_step(batch)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak": int(peak), "resident": int(base), "working": int(peak - base)}

    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.train_step(batch)
        with record_function("mtmd_benchmark_step"):
            trainer.train_step(batch)
    allocs, window = _allocation_events(prof, "mtmd_benchmark_step")
    working = peak_live_bytes(allocs, *window)
    res = resident_bytes(trainer, batch)
    return {"peak": int(res + working), "resident": int(res), "working": int(working)}


def _allocation_events(prof: Any, marker: str) -> tuple[list[tuple[int, int, int]], tuple[int, int]]:
    """``(time_ns, ptr, size)`` of every CPU allocation (size > 0) and release (size < 0) of a finished
    profile in time order, and the ``(start_ns, end_ns)`` of the ``record_function`` named ``marker``.

    (The profiler's own running ``total_allocated`` is not used: it is a process-wide counter that
    misses releases made while no profiler runs, so it drifts between profiling sessions.)"""
    from torch._C._profiler import _EventType

    allocs: list[tuple[int, int, int]] = []
    window: tuple[int, int] | None = None
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            ef = node.extra_fields
            if ef.device.type == "cpu":
                allocs.append((node.start_time_ns, int(ef.ptr), int(ef.alloc_size)))
        elif node.name == marker:
            window = (node.start_time_ns, node.end_time_ns)
        stack.extend(node.children)
    if window is None:
        raise RuntimeError(f"profiler trace has no '{marker}' region; cannot measure the iteration's memory")
    return sorted(allocs), window
