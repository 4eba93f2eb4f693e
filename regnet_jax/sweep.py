"""Design-space sweeps: sample models, train them, collect the table, analyse the populations (docs/design_space.md,
``regnet_jax.design_space``).

    python -m regnet_jax.sweep setup   --out=DIR --space=anynetx_a --n=100 --flops=360e6,400e6 [--seed=0] [--schedule=10ep]
    python -m regnet_jax.sweep setup   --out=DIR --config=experiments/paper.py:anynetx_a     # a ready sweep config
    python -m regnet_jax.sweep launch  --out=DIR [--parallel=N] [--devices=auto|none|gpu:0,1|tpu:0,1,2,3] [--in_process]
    python -m regnet_jax.sweep launch  --out=DIR --slurm [--slurm_partition=P]   # writes DIR/slurm_array.sh
    python -m regnet_jax.sweep collect --out=DIR
    python -m regnet_jax.sweep analyze --sweeps=DIR1,DIR2,... [--report_dir=R] [--bootstrap=10000]
    python -m regnet_jax.sweep spaces                                            # the registered design spaces
"""

from __future__ import annotations

import json
from typing import Any

from absl import flags

from regnet_jax.config import ConfigError, smoke
from regnet_jax.core import compilation_cache, paths
from regnet_jax.core.cli import run

COMMANDS = ("setup", "launch", "collect", "analyze", "spaces")
_SETUP_FLAGS = (
    "name",
    "space",
    "n",
    "seed",
    "flops",
    "params",
    "acts",
    "schedule",
    "base",
    "dataset",
    "epochs",
    "resolution",
    "batch_size",
    "max_draws",
)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string(
        "out", None, "The sweep directory (setup writes it; launch/collect/analyze read it).", flag_values=flag_values
    )
    # setup
    flags.DEFINE_string(
        "config",
        None,
        "A sweep spec: a .json file or an ml_collections file (experiments/paper.py:NAME); flags override it.",
        flag_values=flag_values,
    )
    flags.DEFINE_string("name", "", "Sweep label in reports (default: the directory name).", flag_values=flag_values)
    flags.DEFINE_string(
        "space",
        "",
        "Design space: anynetx_a..anynetx_e, regnetx, regnetx_constrained, regnetx_constrained_d12_28, regnety, or a registered fork.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("n", 0, "Number of models to sample.", flag_values=flag_values)
    flags.DEFINE_integer(
        "seed",
        0,
        "setup: the sampling seed (the same seed gives the same models); analyze: the bootstrap seed.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "flops",
        "",
        "Regime LO,HI in multiply-adds at the training resolution, e.g. 360e6,400e6 or 360M,400M (0 = open).",
        flag_values=flag_values,
    )
    flags.DEFINE_string("params", "", "Parameter-count range LO,HI (e.g. 0,6M).", flag_values=flag_values)
    flags.DEFINE_string("acts", "", "Activation-count range LO,HI.", flag_values=flag_values)
    flags.DEFINE_string(
        "schedule",
        "10ep",
        "Training schedule preset without --base: 10ep (batch 128, lr 0.05), 25ep (lr 0.1) or 100ep.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "base",
        "",
        "A training config file the models start from, e.g. configs/quickstart.py (its dataset, resolution, optim).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "dataset",
        "",
        "config.dataset.name for every model, e.g. imagenet2012, synthetic, quickstart.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "epochs", 0, "config.num_epochs for every model (0 = the schedule's / base's).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "resolution", 0, "config.resolution (0 = keep); flops are counted at this resolution.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "batch_size",
        0,
        "config.batch_size (0 = keep); the learning rate is scaled linearly with it.",
        flag_values=flag_values,
    )
    flags.DEFINE_multi_string(
        "dist",
        [],
        "Replace a distribution of the space: PARAM=kind:low:high:q or PARAM=choice:v1,v2 (repeatable).",
        flag_values=flag_values,
    )
    flags.DEFINE_multi_string(
        "model",
        [],
        "Fix a config.model field for every model: FIELD=VALUE, e.g. se_ratio=0.25 (repeatable).",
        flag_values=flag_values,
    )
    flags.DEFINE_multi_string(
        "set",
        [],
        "Any training-config override: dotted.field=VALUE, e.g. optim.base_lr=0.1 (repeatable).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("max_draws", 1_000_000, "Give up sampling after this many draws.", flag_values=flag_values)
    # launch
    flags.DEFINE_integer(
        "parallel",
        0,
        "Models trained at once (0 = one per GPU/TPU chip, 1 without accelerators).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "devices",
        "auto",
        "auto, none, cpu, gpu:0,1,... or tpu:0,1,...: one model per listed device.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "max_retry",
        3,
        "Retries of a failed model per launch (exit status 2, bad config/data, is not retried).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "only",
        [],
        "Train only these models (ids or indices), e.g. --only=3 for a job-array task.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "shard",
        "",
        "Train only models with index = i mod n: --shard=i/n (one launcher per host of a pod).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "trainer",
        "",
        "Command that trains one model (gets --config=... --workdir=...); default: python -m regnet_jax.train.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "in_process",
        False,
        "Train in the launcher process (no per-model start-up cost; for small CPU sweeps).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "heartbeat_s", 60.0, "Seconds between progress lines of the running models.", flag_values=flag_values
    )
    compilation_cache.define_flag(flag_values)  # launch: passed to the trainers (--in_process: used by the launcher)
    flags.DEFINE_bool(
        "slurm",
        False,
        "Write DIR/slurm_array.sh (one array task per model) instead of training.",
        flag_values=flag_values,
    )
    flags.DEFINE_string("slurm_partition", "", "SLURM partition for --slurm.", flag_values=flag_values)
    flags.DEFINE_string("slurm_time", "24:00:00", "SLURM time limit per model for --slurm.", flag_values=flag_values)
    flags.DEFINE_integer("slurm_gpus", 1, "GPUs per model for --slurm.", flag_values=flag_values)
    flags.DEFINE_integer("slurm_max_jobs", 128, "Array tasks running at once for --slurm.", flag_values=flag_values)
    # analyze
    flags.DEFINE_list("sweeps", [], "Sweep directories to analyse together (default: --out).", flag_values=flag_values)
    flags.DEFINE_string(
        "report_dir", "", "Where analyze writes the report (default: FIRST_SWEEP/analysis).", flag_values=flag_values
    )
    flags.DEFINE_integer("bootstrap", 10_000, "Bootstrap repeats.", flag_values=flag_values)
    flags.DEFINE_float(
        "bootstrap_frac",
        0.25,
        "Fraction of the models drawn (with replacement) per bootstrap repeat.",
        flag_values=flag_values,
    )


def setup_spec(flag_values: flags.FlagValues) -> dict[str, Any]:
    """The sweep spec from --config (if any) with the command-line flags applied on top."""
    from regnet_jax.design_space.sweep_setup import parse_pairs, parse_range, read_spec_file

    spec: dict[str, Any] = read_spec_file(flag_values.config) if flag_values.config else {}
    for name in _SETUP_FLAGS:
        if not flag_values[name].present:
            continue
        value = flag_values[name].value
        key = {"epochs": "num_epochs"}.get(name, name)
        spec[key] = parse_range(value, name) if name in ("flops", "params", "acts") else value
    for flag, key, literal in (("dist", "dists", False), ("model", "model", True), ("set", "train", True)):
        if flag_values[flag].value:
            spec[key] = {**spec.get(key, {}), **parse_pairs(flag_values[flag].value, flag, literal)}
    return spec


def _require_out(flag_values: flags.FlagValues) -> str:
    if not flag_values.out:
        raise ConfigError("give the sweep directory with --out=DIR")
    return flag_values.out


def main(argv: list[str]) -> int | None:
    FLAGS = flags.FLAGS
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise ConfigError(
            f"usage: python -m regnet_jax.sweep {{{'|'.join(COMMANDS)}}} --flags  (see --helpfull); got {argv[1:]}"
        )
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

        spec = setup_spec(FLAGS)
        if spec.get("n"):
            spec["n"] = smoke.limits("sweep setup", n=spec["n"])["n"]
        setup_sweep(spec, _require_out(FLAGS))
    elif cmd == "launch":
        from regnet_jax.design_space.launch import LaunchOptions, launch, write_slurm_script

        out = _require_out(FLAGS)
        if FLAGS.slurm:
            path = write_slurm_script(out, partition=FLAGS.slurm_partition, gpus=FLAGS.slurm_gpus, time_limit=FLAGS.slurm_time,
                                      max_jobs=FLAGS.slurm_max_jobs, max_retry=FLAGS.max_retry,
                                      compilation_cache=FLAGS.compilation_cache)  # fmt: skip
            print(f"wrote {path}; submit it with: sbatch {path}")
            return
        opts = LaunchOptions(parallel=FLAGS.parallel, devices=FLAGS.devices, max_retry=FLAGS.max_retry, only=tuple(FLAGS.only), shard=FLAGS.shard,
                             trainer=FLAGS.trainer, in_process=FLAGS.in_process, heartbeat_s=FLAGS.heartbeat_s,
                             compilation_cache=FLAGS.compilation_cache)  # fmt: skip
        if FLAGS.in_process:
            compilation_cache.enable(FLAGS.compilation_cache, process_count=1)
        result = launch(out, opts)
        if result["failed"]:
            return 1
    elif cmd == "collect":
        from regnet_jax.design_space.collect import collect

        collect(_require_out(FLAGS))
    elif cmd == "analyze":
        from regnet_jax.design_space.report import analyze

        sweeps = FLAGS.sweeps or [_require_out(FLAGS)]
        report_dir = FLAGS.report_dir or str(paths.join(sweeps[0], "analysis"))
        repeats = smoke.limits("sweep analyze", bootstrap=FLAGS.bootstrap)["bootstrap"]
        analyze(sweeps, report_dir, frac=FLAGS.bootstrap_frac, repeats=repeats, seed=FLAGS.seed)
    return None


if __name__ == "__main__":
    run(main, define_flags)
