"""What the benchmark measures and how often (:class:`BenchmarkSettings`), and the names it uses."""

from __future__ import annotations

from dataclasses import dataclass

from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.schemes import benchmark_schemes

#: Trainer class names of the compared training schemes (key = name in the JSON output), from the registry.
SCHEME_TRAINERS: dict[str, str] = {key: s.trainer for key, s in benchmark_schemes().items()}
#: The reference trainer, and its key in the timings (next to the keys of SCHEME_TRAINERS).
STOCK_TRAINER = "nnUNetTrainer"
STOCK = "stock"
#: Keys of the JSON result required by issue 6 (a "details" key is added next to them).
REQUIRED_KEYS = ("train_step_ratio", "inference_ratio", "memory_ratio", "k_scaling_ratio")
#: The one configuration planned, trained and predicted (the synthetic volumes are a few slices thick).
CONFIGURATION = "2d"
#: Name of the merged synthetic dataset (``Dataset<dataset_id>_BenchJoints``).
MERGED_NAME = "BenchJoints"
#: ``plans_name`` of the stock plans derived from the MTMD plans (:func:`.plans.stock_plans`).
STOCK_PLANS_NAME = "nnUNetPlansStock"


@dataclass
class BenchmarkSettings:
    """What to measure and how often (defaults: the full benchmark, about 5 minutes on 2 CPU cores).

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        repeats, warmup: timed and untimed training iterations per trainer (interleaved).
        batch_size: training batch size; None = the planned one (a multiple of the 3 domains).
        k_values, k_batch_size, k_total_labels, k_repeats: domain-scaling measurement (K domains,
            equal batch size, ``k_total_labels`` unified labels split evenly over the K domains).
        predict_repeats: timed prediction runs per model (console script and in process).
        predict_warmup: untimed runs before timing (alternating models, stock first).
        disable_tta: pass ``--disable_tta`` to ``nnUNetv2_predict`` (both models).
        threads: torch threads of the training measurements; None = 1 on CPU (robust on a shared
            machine), torch's default on CUDA.
        clock: ``"cpu"`` (CPU time of this process / of the predict subprocess) or ``"wall"``; None =
            ``"cpu"`` on CPU, ``"wall"`` on CUDA. Both are recorded; this one gives the ratios.
        cases, test_cases, shape: synthetic data per domain (``shape`` = (Z, Y, X) of every volume,
            default 4 slices of 64 x 64, planned as 64 x 64 patches; None = the generator's default per
            domain, 12-16 slices).
        seed: data and batch seed.
        dataset_id: id of the merged dataset; the three source datasets use the next three ids.
        compile, compile_backend: also time the training iteration with ``torch.compile``d networks
            (stock and every scheme; :mod:`.compiled`) with this backend (inductor, as nnU-Net).
    """

    device: str = "cpu"
    repeats: int = 20
    warmup: int = 3
    batch_size: int | None = None
    k_values: tuple[int, ...] = (2, 5, 10)
    k_batch_size: int = 10
    k_total_labels: int = 10
    k_repeats: int = 10
    predict_repeats: int = 3
    predict_warmup: int = 1
    disable_tta: bool = False
    threads: int | None = None
    clock: str | None = None
    cases: int = 2
    test_cases: int = 1
    shape: tuple[int, int, int] | None = (4, 64, 64)
    seed: int = 0
    dataset_id: int = 960
    quick: bool = False
    compile: bool = False
    compile_backend: str = "inductor"

    @property
    def effective_clock(self) -> str:
        """The clock that gives the ratios (see ``clock``)."""
        return self.clock or ("cpu" if self.device == "cpu" else "wall")

    @classmethod
    def quick_settings(cls, device: str = "cpu") -> BenchmarkSettings:
        """Tiny shapes and very few repeats: checks that everything runs (numbers are not meaningful)."""
        return cls(device=device, repeats=2, warmup=1, k_repeats=2, predict_repeats=1, predict_warmup=0,
                   disable_tta=True, cases=1, test_cases=1, shape=(4, 32, 32), quick=True)

    def validate(self) -> None:
        """Raise :class:`InputDataError` for unusable values."""
        for name in ("repeats", "k_repeats", "predict_repeats", "cases", "test_cases", "k_batch_size",
                     "k_total_labels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputDataError(f"--{name} must be an integer >= 1, found {v!r}.")
        for name in ("warmup", "predict_warmup"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputDataError(f"--{name} must be an integer >= 0, found {v!r}.")
        if self.device not in ("cpu", "cuda"):
            raise InputDataError(f"--device must be 'cpu' or 'cuda', found {self.device!r}.")
        if self.clock not in (None, "cpu", "wall"):
            raise InputDataError(f"--clock must be 'cpu' or 'wall', found {self.clock!r}.")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise InputDataError(f"--threads must be an integer >= 1, found {self.threads!r}.")
        if self.batch_size is not None and (self.batch_size < 3 or self.batch_size % 3):
            raise InputDataError(
                f"--batch_size {self.batch_size}: the merged synthetic dataset has 3 domains and every batch "
                "holds the same number of samples of each, so use a multiple of 3 (>= 3), e.g. 6 or 12."
            )
        if len(self.k_values) < 2 or any(k < 1 for k in self.k_values):
            raise InputDataError(f"k_values must hold at least two domain counts >= 1, found {self.k_values}.")
        for k in self.k_values:
            if self.k_batch_size % k or self.k_total_labels % k:
                raise InputDataError(
                    f"--k_batch_size ({self.k_batch_size}) and the number of labels ({self.k_total_labels}) "
                    f"must be multiples of every K in {list(self.k_values)} (K={k} does not divide them): "
                    "each domain gets the same number of samples and labels. 10 works for K = 2, 5, 10."
                )
