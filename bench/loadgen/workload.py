"""What one Optuna worker does per trial: the sampler and the float parameters.

Real clients and virtual workers read the same definition, so a scenario means the
same thing for both: objective sum(x_i**2) over `params` FloatDistribution(-10, 10)
parameters, sampled by RandomSampler or TPESampler with Optuna's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

LOW, HIGH = -10.0, 10.0
SAMPLERS = ("random", "tpe")


@dataclass(frozen=True)
class Workload:
    sampler: str = "random"
    params: int = 1
    # TPESampler's default; the virtual workers switch to TPE's relative-sampling
    # sequence once their cache holds this many complete trials, as TPE does.
    n_startup_trials: int = 10

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, not {self.sampler!r}")
        if self.params < 1:
            raise ValueError("a workload needs at least one parameter")

    @property
    def param_names(self) -> list[str]:
        return ["x"] if self.params == 1 else [f"x{i}" for i in range(self.params)]

    def distribution_json(self) -> str:
        """The text GrpcStorageProxy sends with every SetTrialParameter."""
        from optuna.distributions import FloatDistribution, distribution_to_json

        return distribution_to_json(FloatDistribution(LOW, HIGH))

    def make_sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        import optuna

        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(n_startup_trials=self.n_startup_trials, seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)

    def objective(self) -> SumOfSquares:
        return SumOfSquares(tuple(self.param_names))


@dataclass(frozen=True)
class SumOfSquares:
    """The objective of every scenario: the seed's `x**2`, summed over the parameters."""

    names: tuple[str, ...]

    def __call__(self, trial: optuna.Trial) -> float:
        return sum(trial.suggest_float(name, LOW, HIGH) ** 2 for name in self.names)
