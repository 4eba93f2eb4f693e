"""Design-space sweeps: sample models, train them, collect the table, analyse the populations (docs/design_space.md).

    python -m regnet_jax.sweep setup   --out=DIR --space=anynetx_a --n=100 --flops=360e6,400e6 [--seed=0] [--schedule=10ep]
    python -m regnet_jax.sweep setup   --out=DIR --config=experiments/paper.py:anynetx_a     # a ready sweep config
    python -m regnet_jax.sweep launch  --out=DIR [--parallel=N] [--devices=auto|none|gpu:0,1|tpu:0,1,2,3] [--in_process]
    python -m regnet_jax.sweep launch  --out=DIR --slurm [--slurm_partition=P]   # writes DIR/slurm_array.sh
    python -m regnet_jax.sweep collect --out=DIR
    python -m regnet_jax.sweep analyze --sweeps=DIR1,DIR2,... [--report_dir=R] [--bootstrap=10000]
    python -m regnet_jax.sweep spaces                                            # the registered design spaces
"""

from __future__ import annotations

import ast
import json
import sys
from typing import Any

from absl import flags

from regnet_jax import paths
from regnet_jax.config import ConfigError

COMMANDS = ("setup", "launch", "collect", "analyze", "spaces")
_SETUP_FLAGS = ("name", "space", "n", "seed", "flops", "params", "acts", "schedule", "base", "dataset", "epochs", "resolution", "batch_size", "max_draws")


def _define_flags() -> flags.FlagValues:
    f = flags
    f.DEFINE_string("out", None, "The sweep directory (setup writes it; launch/collect/analyze read it).")
    # setup
    f.DEFINE_string("config", None, "A sweep spec: a .json file or an ml_collections file (experiments/paper.py:NAME); flags override it.")
    f.DEFINE_string("name", "", "Sweep label in reports (default: the directory name).")
    f.DEFINE_string("space", "", "Design space: anynetx_a..anynetx_e, regnetx, regnetx_constrained, regnetx_constrained_d12_28, regnety, or a registered fork.")
    f.DEFINE_integer("n", 0, "Number of models to sample.")
    f.DEFINE_integer("seed", 0, "setup: the sampling seed (the same seed gives the same models); analyze: the bootstrap seed.")
    f.DEFINE_string("flops", "", "Regime LO,HI in multiply-adds at the training resolution, e.g. 360e6,400e6 or 360M,400M (0 = open).")
    f.DEFINE_string("params", "", "Parameter-count range LO,HI (e.g. 0,6M).")
    f.DEFINE_string("acts", "", "Activation-count range LO,HI.")
    f.DEFINE_string("schedule", "10ep", "Training schedule preset without --base: 10ep (batch 128, lr 0.05), 25ep (lr 0.1) or 100ep.")
    f.DEFINE_string("base", "", "A training config file the models start from, e.g. configs/quickstart.py (its dataset, resolution, optim).")
    f.DEFINE_string("dataset", "", "config.dataset.name for every model, e.g. imagenet2012, synthetic, quickstart.")
    f.DEFINE_integer("epochs", 0, "config.num_epochs for every model (0 = the schedule's / base's).")
    f.DEFINE_integer("resolution", 0, "config.resolution (0 = keep); flops are counted at this resolution.")
    f.DEFINE_integer("batch_size", 0, "config.batch_size (0 = keep); the learning rate is scaled linearly with it.")
    f.DEFINE_multi_string("dist", [], "Replace a distribution of the space: PARAM=kind:low:high:q or PARAM=choice:v1,v2 (repeatable).")
    f.DEFINE_multi_string("model", [], "Fix a config.model field for every model: FIELD=VALUE, e.g. se_ratio=0.25 (repeatable).")
    f.DEFINE_multi_string("set", [], "Any training-config override: dotted.field=VALUE, e.g. optim.base_lr=0.1 (repeatable).")
    f.DEFINE_integer("max_draws", 1_000_000, "Give up sampling after this many draws.")
    # launch
    f.DEFINE_integer("parallel", 0, "Models trained at once (0 = one per GPU/TPU chip, 1 without accelerators).")
    f.DEFINE_string("devices", "auto", "auto, none, cpu, gpu:0,1,... or tpu:0,1,...: one model per listed device.")
    f.DEFINE_integer("max_retry", 3, "Retries of a failed model per launch (exit status 2, bad config/data, is not retried).")
    f.DEFINE_list("only", [], "Train only these models (ids or indices), e.g. --only=3 for a job-array task.")
    f.DEFINE_string("shard", "", "Train only models with index = i mod n: --shard=i/n (one launcher per host of a pod).")
    f.DEFINE_string("trainer", "", "Command that trains one model (gets --config=... --workdir=...); default: python -m regnet_jax.train.")
    f.DEFINE_bool("in_process", False, "Train in the launcher process (no per-model start-up cost; for small CPU sweeps).")
    f.DEFINE_float("heartbeat_s", 60.0, "Seconds between progress lines of the running models.")
    f.DEFINE_bool("slurm", False, "Write DIR/slurm_array.sh (one array task per model) instead of training.")
    f.DEFINE_string("slurm_partition", "", "SLURM partition for --slurm.")
    f.DEFINE_string("slurm_time", "24:00:00", "SLURM time limit per model for --slurm.")
    f.DEFINE_integer("slurm_gpus", 1, "GPUs per model for --slurm.")
    f.DEFINE_integer("slurm_max_jobs", 128, "Array tasks running at once for --slurm.")
    # analyze
    f.DEFINE_list("sweeps", [], "Sweep directories to analyse together (default: --out).")
    f.DEFINE_string("report_dir", "", "Where analyze writes the report (default: FIRST_SWEEP/analysis).")
    f.DEFINE_integer("bootstrap", 10_000, "Bootstrap repeats.")
    f.DEFINE_float("bootstrap_frac", 0.25, "Fraction of the models drawn (with replacement) per bootstrap repeat.")
    return f.FLAGS


_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}


def parse_number(text: str) -> float:
    """'360e6', '360M', '0.4G' -> a float."""
    t = text.strip().lower()
    scale = _SUFFIX.get(t[-1:], 1.0)
    try:
        return float(t[:-1] if t[-1:] in _SUFFIX else t) * scale
    except ValueError:
        raise ConfigError(f"{text!r} is not a number (write e.g. 360e6 or 360M)") from None


def parse_range(text: str, what: str) -> list[float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise ConfigError(f"--{what}={text!r}: write LO,HI, e.g. --{what}=360e6,400e6 (0 = unbounded)")
    return [parse_number(p) for p in parts]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _pairs(items: list[str], flag: str, literal: bool) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--{flag}={item!r}: write KEY=VALUE")
        out[key.strip()] = _literal(value) if literal else value
    return out


def setup_spec(F: flags.FlagValues) -> dict[str, Any]:
    """The sweep spec from --config (if any) with the command-line flags applied on top."""
    from regnet_jax.design_space.sweep_setup import read_spec_file

    spec: dict[str, Any] = read_spec_file(F.config) if F.config else {}
    for name in _SETUP_FLAGS:
        if not F[name].present:
            continue
        value = F[name].value
        key = {"epochs": "num_epochs"}.get(name, name)
        spec[key] = parse_range(value, name) if name in ("flops", "params", "acts") else value
    for flag, key, literal in (("dist", "dists", False), ("model", "model", True), ("set", "train", True)):
        if F[flag].value:
            spec[key] = {**spec.get(key, {}), **_pairs(F[flag].value, flag, literal)}
    return spec


def _require_out(F: flags.FlagValues) -> str:
    if not F.out:
        raise ConfigError("give the sweep directory with --out=DIR")
    return F.out


def main(argv: list[str]) -> None:
    F = flags.FLAGS
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise ConfigError(f"usage: python -m regnet_jax.sweep {{{'|'.join(COMMANDS)}}} --flags  (see --helpfull); got {argv[1:]}")
    cmd = argv[1]
    if cmd == "spaces":
        from regnet_jax.design_space import SPACES

        for s in SPACES.values():
            d = s.describe()
            rel = "".join(f"; {k}: {', '.join(d[k])}" for k in ("shared", "increasing") if d[k])
            print(f"{s.name:<28} {d['description']}\n{'':<28} {json.dumps(d['dists'])}{rel}")
        return
    if cmd == "setup":
        from regnet_jax.design_space.sweep_setup import setup_sweep

        setup_sweep(setup_spec(F), _require_out(F))
    elif cmd == "launch":
        from regnet_jax.design_space.launch import LaunchOptions, launch, write_slurm_script

        out = _require_out(F)
        if F.slurm:
            path = write_slurm_script(out, partition=F.slurm_partition, gpus=F.slurm_gpus, time_limit=F.slurm_time,
                                      max_jobs=F.slurm_max_jobs, max_retry=F.max_retry)  # fmt: skip
            print(f"wrote {path}; submit it with: sbatch {path}")
            return
        opts = LaunchOptions(parallel=F.parallel, devices=F.devices, max_retry=F.max_retry, only=tuple(F.only), shard=F.shard,
                             trainer=F.trainer, in_process=F.in_process, heartbeat_s=F.heartbeat_s)  # fmt: skip
        result = launch(out, opts)
        if result["failed"]:
            sys.exit(1)
    elif cmd == "collect":
        from regnet_jax.design_space.collect import collect

        collect(_require_out(F))
    elif cmd == "analyze":
        from regnet_jax.design_space.report import analyze

        sweeps = F.sweeps or [_require_out(F)]
        report_dir = F.report_dir or str(paths.join(sweeps[0], "analysis"))
        analyze(sweeps, report_dir, frac=F.bootstrap_frac, repeats=F.bootstrap, seed=F.seed)


if __name__ == "__main__":
    from regnet_jax.cli import run

    _define_flags()
    run(main)
