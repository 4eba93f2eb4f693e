"""Design spaces: declared ranges + distributions + constraints, sampled into complete ``config.model`` dicts.

A ``DesignSpace`` is data. The paper's spaces (Radosavovic et al. 2020, §3.2-§4, Table 1; docs/fidelity.md#design-spaces) are declared at the bottom of this file in a few
lines each, and a new one is a fork::

    from regnet_jax.design_space import get_space, register
    register(get_space("anynetx_e").fork("anynetx_e_swish", model={"activation": "silu"},
                                          dists={"depth": "log_uniform:1:8:1"}))

AnyNet spaces draw per-stage lists of ``depth`` (d_i), ``width`` (w_i), ``bot_mul`` (pycls's bottleneck multiplier,
w_b = w * bot_mul, i.e. 1/b in the paper's notation) and ``group_w`` (g_i); ``shared`` parameters are drawn once for
all stages and ``increasing`` ones are non-decreasing across stages. RegNet spaces draw ``depth, w0, wa, wm, group_w,
bot_mul`` and keep only rules that give exactly ``num_stages`` stages (pycls's REGNET.NUM_STAGES check).

Every AnyNet draw goes through the paper's compatibility rule (App. D; ``adjust_block_compatibility``: g = w_b if
g > w_b, else w_b rounded to a multiple of g), so each sample builds; draws whose adjusted values leave the declared
ranges or break an ordering are rejected, never clipped. ``sample_space`` adds a complexity regime, the space's own
constraints, duplicate removal (on the resolved architecture) and a clear error when too few models pass.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from regnet_jax.config import ConfigError, validate_model
from regnet_jax.design_space.distributions import Dist, as_dist
from regnet_jax.models.complexity import count
from regnet_jax.models.regnet import adjust_block_compatibility, generate_regnet
from regnet_jax.models.spec import model_spec

ANYNET_PARAMS = ("depth", "width", "bot_mul", "group_w")
REGNET_PARAMS = ("depth", "w0", "wa", "wm", "group_w", "bot_mul")
CX_METRICS = ("flops", "params", "acts")
DEFAULT_MODEL: Mapping[str, Any] = MappingProxyType(
    dict(stem_type="simple_stem_in", stem_w=32, block_type="res_bottleneck_block", se_ratio=0.0, activation="relu")
)


class TooFewModelsError(ConfigError):
    """The space's constraints and regime admitted fewer distinct models than requested."""


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A named predicate on a built model and its complexity; samples failing it are rejected."""

    name: str
    check: Callable[[dict[str, Any], dict[str, int]], bool]


def relative_cx_limits() -> tuple[Constraint, Constraint]:
    """The RegNet sweep limits of pycls/sweep/config.py (comment on SETUP.CONSTRAINTS.CX; docs/fidelity.md#departures) with F = the model's flops in B: params < 3 + 5.5F (M), acts < 6.5 sqrt(F) (M)."""
    return (
        Constraint("params < (3 + 5.5 F) M", lambda m, counts: counts["params"] < 3e6 + 5.5e-3 * counts["flops"]),
        Constraint("acts < 6.5 sqrt(F) M", lambda m, counts: counts["acts"] < 6.5e6 * math.sqrt(counts["flops"] / 1e9)),
    )


@dataclasses.dataclass(frozen=True)
class DesignSpace:
    """A design space: what to draw (``dists``), how stages relate, fixed model fields and extra constraints."""

    name: str
    kind: str  # 'anynet' or 'regnet'
    dists: Mapping[str, Dist]
    description: str = ""
    shared: tuple[str, ...] = ()  # anynet: drawn once, used by every stage
    increasing: tuple[str, ...] = ()  # anynet: non-decreasing from stage to stage
    num_stages: int = 4
    model: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_MODEL)
    )  # fixed config.model fields (stem, block, se_ratio, activation, ...)
    constraints: tuple[Constraint, ...] = ()

    def __post_init__(self):
        params = ANYNET_PARAMS if self.kind == "anynet" else REGNET_PARAMS
        if self.kind not in ("anynet", "regnet"):
            raise ConfigError(f"design space {self.name!r}: kind must be 'anynet' or 'regnet', got {self.kind!r}")
        dists = {k: as_dist(v) for k, v in self.dists.items()}
        if set(dists) != set(params):
            raise ConfigError(
                f"design space {self.name!r}: a {self.kind} space needs distributions for exactly {params}, got {sorted(dists)}"
            )
        for k, d in dists.items():
            d.validate(f"{self.name}.{k}")
        for field in (*self.shared, *self.increasing):
            if self.kind != "anynet" or field not in params:
                raise ConfigError(
                    f"design space {self.name!r}: shared/increasing apply to anynet parameters {ANYNET_PARAMS}, not {field!r}"
                )
        object.__setattr__(self, "dists", MappingProxyType(dists))
        object.__setattr__(self, "model", MappingProxyType({**DEFAULT_MODEL, **self.model}))

    def fork(self, name: str, *, dists: Mapping[str, Any] | None = None, model: Mapping[str, Any] | None = None,
             constraints: Sequence[Constraint] = (), **changes: Any) -> DesignSpace:  # fmt: skip
        """A new space: this one with some distributions, fixed model fields or fields replaced; ``constraints`` are
        added. Its description says what changed, unless ``description`` is given."""
        if "description" not in changes:
            what = [f"{k}={v}" for k, v in {**(dists or {}), **(model or {})}.items()] + [c.name for c in constraints]
            changes["description"] = f"{self.name} forked: {', '.join(what) or 'unchanged'}"
        return dataclasses.replace(
            self,
            name=name,
            dists={**self.dists, **(dists or {})},
            model={**self.model, **(model or {})},
            constraints=(*self.constraints, *constraints),
            **changes,
        )

    # -- drawing and building -------------------------------------------------------------------------------------

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """Raw values: per-stage lists for AnyNet (sorted where ``increasing``), scalars for RegNet."""
        if self.kind == "regnet":
            return {k: self.dists[k].sample(rng) for k in REGNET_PARAMS}
        values = {}
        for k in ANYNET_PARAMS:
            if k in self.shared:
                values[k] = [self.dists[k].sample(rng)] * self.num_stages
            else:
                values[k] = [self.dists[k].sample(rng) for _ in range(self.num_stages)]
            # Sorting i.i.d. draws gives their distribution conditioned on being ordered (up to how ties are
            # weighted), without rejecting ~n! draws per sample.
            if k in self.increasing:
                values[k] = sorted(values[k])
        return values

    def build(self, values: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
        """The complete, validated ``config.model`` for drawn ``values`` (AnyNet widths/groups made compatible)."""
        fixed = {**self.model, "num_classes": num_classes}
        if self.kind == "regnet":
            return validate_model({**fixed, "type": "regnet", **{k: values[k] for k in REGNET_PARAMS}})
        widths, group_ws = adjust_block_compatibility(values["width"], values["bot_mul"], values["group_w"])
        strides = list(fixed.pop("strides", [2] * self.num_stages))
        return validate_model(
            {
                **fixed,
                "type": "anynet",
                "depths": list(values["depth"]),
                "widths": widths,
                "strides": strides,
                "bot_muls": list(values["bot_mul"]),
                "group_ws": group_ws,
            }  # fmt: skip
        )

    def violations(self, model: Mapping[str, Any]) -> list[str]:
        """Every way ``model`` is outside this space (its ranges, sharing, ordering, stage count, fixed fields); [] if inside."""
        out = [
            f"{k}={model.get(k)!r} but the space fixes {v!r}"
            for k, v in self.model.items()
            if k != "strides" and model.get(k) != v
        ]
        if model.get("type") != self.kind:
            return out + [f"type={model.get('type')!r} but the space is {self.kind!r}"]
        if self.kind == "regnet":
            out += [
                f"{k}={model[k]!r} is outside {self.dists[k]}"
                for k in REGNET_PARAMS
                if not self.dists[k].contains(model[k])
            ]
            rule = generate_regnet(model["depth"], model["w0"], model["wa"], model["wm"])
            if not rule.num_stages == rule.total_stages == self.num_stages:
                out.append(
                    f"the rule gives {rule.num_stages} stages ({rule.total_stages} total), not {self.num_stages}"
                )
            return out
        lists = {
            "depth": model["depths"],
            "width": model["widths"],
            "bot_mul": model["bot_muls"],
            "group_w": model["group_ws"],
        }
        if any(len(v) != self.num_stages for v in lists.values()):
            return out + [f"{self.num_stages} stages expected, got {len(model['depths'])}"]
        w_b = [int(round(w * b)) for w, b in zip(model["widths"], model["bot_muls"])]
        g_max = max(model["group_ws"])
        for k, vals in lists.items():
            for i, v in enumerate(vals):
                # App. D: a group width above the bottleneck width is set to the bottleneck width.
                capped = k == "group_w" and v == w_b[i]
                if not self.dists[k].contains(v) and not capped:
                    out.append(f"{k}[{i}]={v!r} is outside {self.dists[k]}")
            if k in self.increasing and any(a > b for a, b in zip(vals, vals[1:])):
                out.append(f"{k}={vals} is not non-decreasing")
        for k in self.shared:
            vals = lists[k]
            same = all(g == min(g_max, wb) for g, wb in zip(vals, w_b)) if k == "group_w" else len(set(vals)) == 1
            if not same:
                out.append(
                    f"{k}={vals} is not one shared value"
                    + (" (capped at each stage's bottleneck width)" if k == "group_w" else "")
                )
        return out

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (for sweep summaries and docs)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "dists": {k: str(v) for k, v in self.dists.items()},
            "shared": list(self.shared),
            "increasing": list(self.increasing),
            "num_stages": self.num_stages,
            "model": dict(self.model),
            "constraints": [c.name for c in self.constraints],
        }


# -- sampling -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    """One accepted model: its config, the raw drawn values and its complexity."""

    model: dict[str, Any]
    values: dict[str, Any]
    complexity: dict[str, int]


@dataclasses.dataclass
class SampleResult:
    samples: list[Sample]
    draws: int
    rejected: dict[str, int]  # reason -> count
    seconds: float


Regime = Mapping[str, Sequence[float]]  # metric -> (lo, hi); 0 means unbounded on that side


def regime_violation(counts: Mapping[str, int], regime: Regime | None) -> str | None:
    """The first complexity metric outside ``regime`` (e.g. ``'flops'``), or None."""
    for metric, (lo, hi) in (regime or {}).items():
        if metric not in CX_METRICS:
            raise ConfigError(f"regime metric {metric!r} is unknown: use {CX_METRICS}")
        if (lo and counts[metric] < lo) or (hi and counts[metric] > hi):
            return metric
    return None


def _stage_count_ok(space: DesignSpace, v: Mapping[str, Any]) -> bool:
    rule = generate_regnet(v["depth"], v["w0"], v["wa"], v["wm"])
    return rule.num_stages == rule.total_stages == space.num_stages


def _key(model: Mapping[str, Any]) -> Any:
    return model_spec(model)  # frozen dataclass: two draws that build the same network are duplicates


def sample_space(
    space: DesignSpace,
    n: int,
    seed: int = 0,
    *,
    resolution: int = 224,
    num_classes: int = 1000,
    regime: Regime | None = None,
    max_draws: int = 1_000_000,
    log: Callable[[str], None] | None = None,
) -> SampleResult:
    """``n`` distinct models from ``space`` inside ``regime`` (complexity at ``resolution`` px), reproducible from ``seed``.

    Draws until n models pass or ``max_draws`` is reached; raises TooFewModelsError (with the rejection counts) then.
    """
    if n < 1:
        raise ConfigError(f"n={n}: ask for at least one model")
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    seen: set[Any] = set()
    rejected: collections.Counter[str] = collections.Counter()
    t0 = last_log = time.perf_counter()
    draws = built = 0
    while len(samples) < n and draws < max_draws:
        draws += 1
        values = space.draw(rng)
        if space.kind == "regnet" and not _stage_count_ok(space, values):  # cheap, and most RegNet draws fail it
            rejected["stage count"] += 1
            continue
        try:
            model = space.build(values, num_classes)
        except (ConfigError, ValueError) as e:
            rejected["not buildable"] += 1
            if rejected["not buildable"] == 1000 and not built:  # nothing builds: a bad fixed field, not bad luck
                raise ConfigError(
                    f"design space {space.name!r}: none of the first 1,000 candidates builds a model; the first reason: {e}"
                ) from None
            continue
        built += 1
        problems = space.violations(model)
        if problems:
            rejected[
                "outside the space after width/group adjustment" if space.kind == "anynet" else "outside the space"
            ] += 1
            continue
        counts = count(model, resolution)
        bad = regime_violation(counts, regime)
        if bad:
            rejected[f"{bad} outside the regime"] += 1
            continue
        failed = next((c.name for c in space.constraints if not c.check(model, counts)), None)
        if failed:
            rejected[failed] += 1
            continue
        key = _key(model)
        if key in seen:
            rejected["duplicate"] += 1
            continue
        seen.add(key)
        samples.append(Sample(model, _plain(values), counts))
        if log and time.perf_counter() - last_log > 5:
            last_log = time.perf_counter()
            log(
                f"sampling {space.name}: {len(samples)}/{n} accepted of {draws:,} draws ({draws / (last_log - t0):,.0f} draws/s)"
            )
    result = SampleResult(samples, draws, dict(rejected), time.perf_counter() - t0)
    if len(samples) < n:
        reasons = ", ".join(f"{k}: {v:,}" for k, v in rejected.most_common()) or "none"
        raise TooFewModelsError(
            f"design space {space.name!r} gave only {len(samples)} of the {n} models requested after {draws:,} draws "
            f"(rejected: {reasons}). Widen the complexity regime (e.g. --flops), widen the space's ranges (--dist), "
            f"ask for fewer models (--n) or allow more draws (--max_draws)"
        )
    return result


def _plain(v: Any) -> Any:
    """Drawn values as JSON-able Python types."""
    return json.loads(json.dumps(v, default=lambda x: x.item() if hasattr(x, "item") else str(x)))


# -- the paper's design spaces (Radosavovic et al. 2020, §3.2-§4, Table 1; docs/fidelity.md#design-spaces) -------------------------------------------------------------------

_B = Dist("power2_uniform", 0.25, 1.0, 1 / 128)  # b in {1, 2, 4}  ->  bot_mul in {1, 1/2, 1/4}
_G = Dist("power2_uniform", 1, 32, 1)  # g in {1, 2, 4, 8, 16, 32}
_ANYNET = dict(depth=Dist("log_uniform", 1, 16, 1), width=Dist("log_uniform", 8, 1024, 8), bot_mul=_B, group_w=_G)
_REGNET = dict(
    depth=Dist("uniform", 1, 63, 1),  # d < 64; only 4-stage rules are kept
    w0=Dist("log_uniform", 8, 256, 8),
    wa=Dist("log_uniform", 8.0, 256.0, 0.1),  # the paper says wa < 256; the lower bound is pycls's default
    wm=Dist("log_uniform", 1.5, 3.0, 0.001),
    group_w=_G,
    bot_mul=_B,
)

SPACES: dict[str, DesignSpace] = {}


def register(space: DesignSpace) -> DesignSpace:
    """Make ``space`` available by name (``--space=NAME``); returns it."""
    SPACES[space.name] = space
    return space


def get_space(name: str) -> DesignSpace:
    """A registered design space by name."""
    if name not in SPACES:
        raise ConfigError(
            f"unknown design space {name!r}: use one of {sorted(SPACES)}, or fork one with --dist/--model"
        )
    return SPACES[name]


ANYNETX_A = register(
    DesignSpace(
        "anynetx_a",
        "anynet",
        _ANYNET,
        "4 stages x (d_i <= 16, w_i <= 1024 with 8 | w_i, b_i in {1,2,4}, g_i in {1..32})",
    )
)
ANYNETX_B = register(
    ANYNETX_A.fork("anynetx_b", shared=("bot_mul",), description="AnyNetX_A with one shared bottleneck ratio b")
)
ANYNETX_C = register(
    ANYNETX_B.fork("anynetx_c", shared=("bot_mul", "group_w"), description="AnyNetX_B with one shared group width g")
)
ANYNETX_D = register(ANYNETX_C.fork("anynetx_d", increasing=("width",), description="AnyNetX_C with w_{i+1} >= w_i"))
ANYNETX_E = register(
    ANYNETX_D.fork("anynetx_e", increasing=("width", "depth"), description="AnyNetX_D with d_{i+1} >= d_i")
)
REGNETX = register(
    DesignSpace(
        "regnetx",
        "regnet",
        _REGNET,
        "quantised linear widths: d < 64, w0 and wa < 256, 1.5 <= wm <= 3, b and g as AnyNetX; 4 stages",
    )
)
REGNETX_CONSTRAINED = register(
    REGNETX.fork(
        "regnetx_constrained",
        dists={
            "bot_mul": Dist("choice", values=(1.0,)),
            "depth": Dist("uniform", 1, 40, 1),
            "wm": Dist("log_uniform", 2.0, 3.0, 0.001),
        },
        constraints=relative_cx_limits(),
        description="RegNetX with b = 1, d <= 40, wm >= 2 and params < 3 + 5.5F (M), acts < 6.5 sqrt(F) (M) (paper §4)",
    )
)
REGNETX_D12_28 = register(
    REGNETX_CONSTRAINED.fork(
        "regnetx_constrained_d12_28",
        dists={"depth": Dist("uniform", 12, 28, 1)},
        description="RegNetX constrained with 12 <= d <= 28 (paper §5)",
    )
)
REGNETY = register(
    REGNETX.fork("regnety", model={"se_ratio": 0.25}, description="RegNetX + squeeze-and-excitation (ratio 1/4)")
)
