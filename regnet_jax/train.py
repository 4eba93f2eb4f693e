"""Data-parallel training with exact evaluation, checkpoints and metrics (``regnet_jax.training.trainer``).

    python -m regnet_jax.train --config=configs/regnety_4gf.py[:25ep|:10ep] --workdir=DIR [--config.batch_size=256 ...]

Resumes from DIR's newest good checkpoint if there is one; a config that changes what the run trains is refused
there unless ``--allow_config_change`` (``regnet_jax.config.diff``). Multi-host: every process runs the same command;
``jax.distributed.initialize`` is called on a detected cluster launch (SLURM, Open MPI, TPU pod) or with
``--distributed`` (plus ``--coordinator_address/--num_processes/--process_id`` where JAX cannot detect them).
Exit status: 0 done, 1 failure (e.g. a NaN loss), 2 bad config/data/checkpoint, 3 preempted (SIGTERM: checkpoint
saved), 4 a multi-process run stalled (no step for ``--stall_timeout_s``), 130 interrupted (Ctrl-C: a checkpoint
saved at the next step; a second Ctrl-C stops at once without saving).

Writes into DIR (local or gs://): config.json (+ config_history.jsonl after an allowed change), checkpoints/,
eval_metrics.jsonl (+ eval_ema_metrics.jsonl), train_metrics.jsonl, TensorBoard events, curves.png and, when
finished, summary.json (see docs/training.md); lock.json while it runs (one run per workdir).

``train_and_evaluate(config, workdir)`` is the same as a function.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import NoReturn

import jax
from absl import flags, logging

from regnet_jax.config import ConfigError, define_config_flag
from regnet_jax.core import compilation_cache
from regnet_jax.core.cli import EXIT_USAGE, run
from regnet_jax.core.distributed import (
    HEARTBEAT_TIMEOUT_S,
    STALL_TIMEOUT_S,
    maybe_initialize_distributed,
    watch_progress,
)
from regnet_jax.core.errors import UserError
from regnet_jax.training.preemption import EXIT_PREEMPTED, Preempted
from regnet_jax.training.trainer import NonFiniteLossError, train_and_evaluate

__all__ = ["train_and_evaluate"]  # the public API; the rest is the command line


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    define_config_flag("config", "Training config file, e.g. configs/regnety_4gf.py or configs/regnety_4gf.py:25ep.",
                       flag_values=flag_values)  # fmt: skip
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the resolved config (resumes from it).",
                        flag_values=flag_values)  # fmt: skip
    flags.DEFINE_bool("allow_config_change", False, "Resume a run with a config that changes what it trains (the old "
                      "config is kept in WORKDIR/config_history.jsonl); without it such a resume is refused.",
                      flag_values=flag_values)  # fmt: skip
    flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize (default: only on a detected cluster launch).",
                      flag_values=flag_values)  # fmt: skip
    flags.DEFINE_string(
        "coordinator_address", "", "host:port of process 0, where JAX cannot detect it.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "num_processes", 0, "Number of processes, where JAX cannot detect it.", flag_values=flag_values
    )
    flags.DEFINE_integer("process_id", -1, "This process's index, where JAX cannot detect it.", flag_values=flag_values)
    flags.DEFINE_integer("heartbeat_timeout_s", HEARTBEAT_TIMEOUT_S, "Multi-process: a process silent this long is taken "
                         "for dead and JAX ends the others (jax.distributed's heartbeat timeout).", flag_values=flag_values)  # fmt: skip
    flags.DEFINE_integer("stall_timeout_s", STALL_TIMEOUT_S, "Multi-process: no training step finished for this long "
                         "(compiling and evaluating included) ends every process with one line (exit 4) instead of a "
                         "silent hang; 0 = never.", flag_values=flag_values)  # fmt: skip
    compilation_cache.define_flag(flag_values)


def _exit_multiprocess_error(e: Exception) -> NoReturn:
    """End this process of a multi-process run at once, with one line saying why (traceback first if unexpected).

    Exiting normally would hang: JAX's exit-time shutdown waits for every other process (for a dead one, until the
    heartbeat timeout). Exiting at once closes this process's connections, so the others stop at their next step."""
    where = f"process {jax.process_index()} of {jax.process_count()}"
    if isinstance(e, jax.errors.JaxRuntimeError):
        code, message = (
            1,
            (
                f"{where}: a step shared by all processes failed ({str(e).strip().splitlines()[0]}); another process has "
                "probably died (see its log). Rerun the same command on every host to resume from the last checkpoint"
            ),
        )
    elif isinstance(e, UserError):
        code, message = EXIT_USAGE, f"{where}: {e}"
    else:
        traceback.print_exc()
        code, message = 1, f"{where}: {type(e).__name__}: {e}"
    print(f"error: {message}", file=sys.stderr)
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str]) -> int | None:
    del argv
    FLAGS = flags.FLAGS
    if FLAGS.config is None or not FLAGS.workdir:
        raise ConfigError(
            "--config and --workdir are both required, e.g. --config=configs/quickstart.py --workdir=/tmp/quickstart"
        )
    maybe_initialize_distributed(
        FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.heartbeat_timeout_s
    )
    watch_progress(FLAGS.stall_timeout_s)
    compilation_cache.enable(FLAGS.compilation_cache)  # after initialize: the default depends on the process count
    try:
        summary = train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.allow_config_change)
    except Preempted as e:
        logging.warning("%s", e)
        return EXIT_PREEMPTED
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if jax.process_count() == 1:
            raise
        _exit_multiprocess_error(e)
    if jax.process_index() == 0:
        f = summary["final"]
        print(f"final: top-1 error {f['top1_err']:.2f}% (accuracy {100 - f['top1_err']:.2f}%), top-5 error {f['top5_err']:.2f}%, "
              f"loss {f['loss']:.4f}; best top-1 error {summary['best_top1_err']:.2f}%; {summary['wall_time_s']:.0f}s")  # fmt: skip
    return None


if __name__ == "__main__":
    run(main, define_flags)
