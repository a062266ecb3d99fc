"""Learnable SupCon temperatures, one per contrastive scale, kept inside a fixed range.

The 2022 paper (Boutillon et al., "Generalizable multi-task, multi-domain deep segmentation of sparse
pediatric imaging datasets via multi-scale contrastive regularization and multi-joint anatomical
priors") used the same fixed temperature 0.1 at every scale and named a learnable temperature per
scale as future work. :class:`BoundedTemperature` is that parameter.

Parameterisation: a sigmoid between the bounds, in log space::

    tau_s = exp(log(lo) + (log(hi) - log(lo)) * sigmoid(theta_s)),      lo <= tau_s <= hi

with ``theta_s`` initialised so that ``tau_s`` equals the given starting temperature. The log space
makes a step of ``theta`` change the temperature by a factor rather than by an amount (the temperature
divides the similarities), and the sigmoid keeps every value inside the range whatever the optimizer
does: a very large step only saturates the sigmoid (the gradient then vanishes), it cannot leave the
range. The result is also clamped to ``[lo, hi]`` against float rounding of ``exp(log(x))``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from nnunetv2_mtmd.errors import InputDataError

__all__ = ["BoundedTemperature", "check_temperature_range"]


def check_temperature_range(init: float, temperature_range: tuple[float, float]) -> tuple[float, float]:
    """Validate ``0 < lo < init < hi < inf`` and return ``(lo, hi)`` as floats."""
    try:
        lo, hi = (float(v) for v in temperature_range)
    except (TypeError, ValueError) as e:
        raise ValueError(f"temperature_range must be two numbers (low, high), got {temperature_range!r}.") from e
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"temperature_range must satisfy 0 < low < high < inf, got {temperature_range!r}.")
    if not lo < float(init) < hi:
        raise ValueError(
            f"the starting temperature {init!r} must lie strictly inside temperature_range {temperature_range!r} "
            "(the sigmoid parameterisation reaches the bounds only in the limit)."
        )
    return lo, hi


class BoundedTemperature(nn.Module):
    """``S`` learnable temperatures in ``[lo, hi]`` (see the module docstring for the parameterisation).

    Args:
        num_scales: ``S``, the number of contrastive scales (one temperature each).
        init: starting temperature of every scale (strictly inside the range).
        temperature_range: ``(lo, hi)``.

    The only parameter is ``theta`` ``(S,)`` (float32); the bounds are plain attributes (configuration,
    not state: a checkpoint entry, :meth:`checkpoint_entry`, records them and :meth:`load_checkpoint_entry`
    refuses an entry made for other bounds).
    """

    def __init__(self, num_scales: int, init: float = 0.1,
                 temperature_range: tuple[float, float] = (0.03, 1.0)) -> None:
        super().__init__()
        if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 1:
            raise ValueError(f"BoundedTemperature: num_scales must be an integer >= 1, got {num_scales!r}.")
        self.low, self.high = check_temperature_range(init, temperature_range)
        self.init = float(init)
        self._log_low = math.log(self.low)
        self._log_span = math.log(self.high) - self._log_low
        u = (math.log(self.init) - self._log_low) / self._log_span  # in (0, 1)
        self.theta = nn.Parameter(torch.full((num_scales,), math.log(u / (1 - u)), dtype=torch.float32))

    @property
    def num_scales(self) -> int:
        return int(self.theta.numel())

    def forward(self) -> Tensor:
        """The ``(S,)`` float32 temperatures (differentiable with respect to ``theta``)."""
        t = torch.exp(self._log_low + self._log_span * torch.sigmoid(self.theta.float()))
        return t.clamp(self.low, self.high)

    def values(self) -> list[float]:
        """The temperatures as Python floats (one host synchronisation)."""
        with torch.no_grad():
            return [float(v) for v in self().cpu()]

    def checkpoint_entry(self) -> dict[str, Any]:
        """Plain data for a checkpoint (loadable with ``torch.load(weights_only=True)``)."""
        return {"theta": self.theta.detach().cpu().clone(), "range": [self.low, self.high], "init": self.init}

    def load_checkpoint_entry(self, entry: Any, where: str = "checkpoint") -> None:
        """Restore ``theta`` in place (the optimizer keeps referencing the same parameter).

        Raises :class:`~nnunetv2_mtmd.errors.InputDataError` (a ValueError) naming ``where`` for a malformed
        entry, other bounds or another number of scales."""
        if not isinstance(entry, dict) or not isinstance(entry.get("theta"), Tensor):
            raise InputDataError(f"{where}: the MSC temperature entry must be a dict with a 'theta' tensor, "
                                 f"got {type(entry).__name__}.")
        rng = entry.get("range")
        if rng is None or [float(v) for v in rng] != [self.low, self.high]:
            raise InputDataError(f"{where}: the MSC temperatures were trained in the range {rng!r}, this trainer uses "
                             f"{[self.low, self.high]!r}. Continue with the trainer that wrote the checkpoint.")
        theta = entry["theta"]
        if theta.shape != self.theta.shape:
            raise InputDataError(f"{where}: {theta.numel()} MSC temperature(s) in the checkpoint, this trainer has "
                             f"{self.num_scales}.")
        with torch.no_grad():
            self.theta.copy_(theta.to(self.theta.device, self.theta.dtype))

    def extra_repr(self) -> str:
        return f"num_scales={self.num_scales}, init={self.init}, range=({self.low}, {self.high})"
