"""The random value types of the pycls sweep samplers (pycls/sweep/random.py, pycls/sweep/samplers.py; docs/fidelity.md#design-spaces), drawn from a numpy ``Generator``.

Every type samples the closed interval [low, high] quantised to q, and returns a value of q's Python type (int or
float), so sampled configs serialise exactly (``Decimal`` avoids 0.1-style float residues):

* ``uniform``: f ~ U[low, high + q), floored to a multiple of q: every multiple of q in [low, high] equally likely.
* ``log_uniform``: log f ~ U(log(low - q*), log(high)] with q* = min(q, low / 2), rounded *up* to a multiple of q,
  so the CDF over the quantised values is linear in log space down to the lowest value.
* ``power2_uniform``: 2^k for k uniform over the integers in [log2 low, log2 high].
* ``power2_or_log_uniform``: a power of two below q, otherwise log-uniform over multiples of q (group widths).
* ``normal`` / ``log_normal``: centred in the (log) range with sigma = range / 6, redrawn until inside, rounded.
* ``choice``: uniform over an explicit list of values (pycls's ``value_sampler``).

A ``Dist`` can be written as a string, ``"log_uniform:1:16:1"`` or ``"choice:0.25,0.5,1.0"``, which is how sweep
configs and ``--dist`` flags fork a design space.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import numpy as np

from regnet_jax.config import ConfigError

Number = int | float


def quantize(f: float, q: Number, op: Callable[[float], float] = math.floor) -> Number:
    """``op(f / q) * q`` as a value of q's type, computed in decimal so that e.g. 3 * 0.1 is exactly 0.3."""
    k = int(op(f / q))
    return type(q)(Decimal(k) * Decimal(str(q)))


def uniform(rng: np.random.Generator, low: Number, high: Number, q: Number) -> Number:
    """A multiple of q in [low, high], all equally likely."""
    return quantize(rng.uniform(low, high + q), q, math.floor)


def log_uniform(rng: np.random.Generator, low: Number, high: Number, q: Number) -> Number:
    """A multiple of q in [low, high] with a log-linear CDF (pycls's ``log_uniform``)."""
    # Negated so that the interval is open at the bottom and closed at the top, (low - q*, high]: ceil then maps it
    # onto [low, high] exactly.
    f = math.exp(-rng.uniform(-math.log(high), -math.log(low - min(q, low / 2))))
    return quantize(f, q, math.ceil)


def power2_uniform(rng: np.random.Generator, low: Number, high: Number, q: Number) -> Number:
    """A power of two in [low, high] (low and high powers of two), all equally likely."""
    k = math.floor(rng.uniform(math.log2(low), math.log2(high) + 1))
    return quantize(2.0**k, q, math.floor)


def power2_or_log_uniform(rng: np.random.Generator, low: Number, high: Number, q: Number) -> Number:
    """A power of two below q, else a log-uniform multiple of q: one log-linear CDF over both parts."""
    f = type(q)(power2_uniform(rng, low, high, low))
    return log_uniform(rng, max(low, q), high, min(high, q)) if f >= q else f


def normal(rng: np.random.Generator, low: Number, high: Number, q: Number) -> Number:
    """A normal centred in [low, high] with sigma = (high - low) / 6, redrawn until inside, rounded to q."""
    mu, sigma, f = (low + high) / 2, (high - low) / 6, math.inf
    while not low <= f <= high:
        f = rng.normal(mu, sigma)
    return quantize(f, q, round)


def log_normal(rng: np.random.Generator, low: Number, high: Number, q: Number) -> Number:
    """``normal`` in log space."""
    lo, hi = math.log(low), math.log(high)
    mu, sigma, f = (lo + hi) / 2, (hi - lo) / 6, math.inf
    while not low <= f <= high:
        f = rng.lognormal(mu, sigma)
    return quantize(f, q, round)


RAND_TYPES: dict[str, Callable[[np.random.Generator, Number, Number, Number], Number]] = {
    "uniform": uniform,
    "log_uniform": log_uniform,
    "power2_uniform": power2_uniform,
    "power2_or_log_uniform": power2_or_log_uniform,
    "normal": normal,
    "log_normal": log_normal,
}
KINDS = (*RAND_TYPES, "choice")


def _is_power2(v: Number) -> bool:
    return v > 0 and math.log2(v).is_integer()


def _divisible(v: Number, q: Number) -> bool:
    return Decimal(str(v)) % Decimal(str(q)) == 0


@dataclasses.dataclass(frozen=True)
class Dist:
    """One parameter's distribution: a random type over [low, high] quantised to q, or a choice among ``values``."""

    kind: str
    low: Number = 0
    high: Number = 0
    q: Number = 1
    values: tuple[Any, ...] = ()

    def __post_init__(self):
        self.validate()

    def validate(self, name: str = "dist") -> None:
        """Raise ConfigError if the bounds cannot be sampled (the rules of pycls's ``validate_rand``)."""
        where = f"{name}: {self}"
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: unknown kind {self.kind!r}; use one of {KINDS}")
        if self.kind == "choice":
            if not self.values:
                raise ConfigError(f"{where}: a choice needs at least one value, e.g. 'choice:1,2,4'")
            return
        lo, hi, q = self.low, self.high, self.q
        if not (q > 0 and lo <= hi):
            raise ConfigError(f"{where}: needs q > 0 and low <= high")
        if lo <= 0 and self.kind not in ("uniform", "normal"):
            raise ConfigError(f"{where}: {self.kind} needs low > 0")
        if self.kind != "power2_or_log_uniform" and not (_divisible(lo, q) and _divisible(hi, q)):
            raise ConfigError(f"{where}: low and high must be multiples of q={q}")
        if self.kind in ("power2_uniform", "power2_or_log_uniform") and not all(_is_power2(v) for v in (lo, hi, q)):
            raise ConfigError(f"{where}: {self.kind} needs low, high and q to be powers of two")

    def sample(self, rng: np.random.Generator) -> Any:
        """One draw."""
        if self.kind == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        return RAND_TYPES[self.kind](rng, self.low, self.high, self.q)

    def contains(self, v: Any) -> bool:
        """Whether ``v`` is a value this distribution can produce (in range and on the q grid, or in the choice)."""
        if self.kind == "choice":
            return v in self.values
        if not self.low <= v <= self.high:
            return False
        if self.kind == "power2_uniform":
            return _is_power2(v)
        if self.kind == "power2_or_log_uniform":
            return (_is_power2(v) and v < self.q) or _divisible(v, min(self.high, self.q))
        return _divisible(v, self.q)

    def __str__(self) -> str:
        if self.kind == "choice":
            return "choice:" + ",".join(str(v) for v in self.values)
        return f"{self.kind}:{self.low}:{self.high}:{self.q}"

    @classmethod
    def parse(cls, text: str) -> Dist:
        """``'log_uniform:1:16:1'`` (kind:low:high:q) or ``'choice:1,2,4'``; ints stay ints if all bounds are."""
        kind, _, rest = text.strip().partition(":")
        if kind == "choice":
            return cls("choice", values=tuple(_number(v) for v in rest.split(",") if v.strip()))
        parts = rest.split(":")
        if kind not in RAND_TYPES or len(parts) != 3:
            raise ConfigError(
                f"cannot read distribution {text!r}: write kind:low:high:q (kind one of {tuple(RAND_TYPES)}) or choice:v1,v2,..."
            )
        nums = [_number(p) for p in parts]
        if any(isinstance(v, float) for v in nums):
            nums = [float(v) for v in nums]
        return cls(kind, *nums)


def _number(text: str) -> Number:
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number") from None
    return int(v) if "." not in text and "e" not in text.lower() and v.is_integer() else v


def as_dist(d: Dist | str | Sequence[Any]) -> Dist:
    """Accept a Dist, its string form, or a (kind, low, high, q) tuple."""
    if isinstance(d, Dist):
        return d
    if isinstance(d, str):
        return Dist.parse(d)
    return Dist(*d)
