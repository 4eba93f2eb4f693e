"""Data-parallel training with exact evaluation, checkpoints and metrics.

    python -m regnet_jax.train --config=configs/regnety_4gf.py[:25ep|:10ep] --workdir=DIR [--config.batch_size=256 ...]

Resumes from DIR's newest good checkpoint if there is one; a config that changes what the run trains is refused
there unless ``--allow_config_change`` (``regnet_jax.config_diff``). Multi-host: every process runs the same command;
``jax.distributed.initialize`` is called on a detected cluster launch (SLURM, Open MPI, TPU pod) or with
``--distributed`` (plus ``--coordinator_address/--num_processes/--process_id`` where JAX cannot detect them).
Exit status: 0 done, 1 failure (e.g. a NaN loss), 2 bad config/data/checkpoint, 3 preempted (checkpoint saved).

Writes into DIR (local or gs://, through regnet_jax.paths): config.json (+ config_history.jsonl after an allowed
change), checkpoints/, eval_metrics.jsonl
(+ eval_ema_metrics.jsonl), train_metrics.jsonl, TensorBoard events, curves.png and, when finished, summary.json (see
docs/training.md); lock.json while it runs (one run per workdir: regnet_jax.workdir_lock).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import sys
import time
import traceback
from typing import Any, NoReturn

import jax
import ml_collections
import numpy as np
from absl import flags, logging

from regnet_jax import checkpoint as ckpt_lib
from regnet_jax import complexity, config_diff, data, metrics, optim, parallel, paths, precise_bn, profiling, workdir_lock
from regnet_jax.cli import define_config_flag, run
from regnet_jax.config import ConfigError, batch_layout, describe_lr, recipe_options, validate_config
from regnet_jax.evaluate import apply_input_conventions, run_evaluation
from regnet_jax.models import create_model
from regnet_jax.weights import WeightsError

EXIT_PREEMPTED = 3
CONFIG_HISTORY = "config_history.jsonl"  # the configs a run was resumed away from, oldest first


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; nothing was saved after the last finite step."""


class Preempted(RuntimeError):
    """SIGTERM (or a multi-host preemption notice) arrived; a checkpoint of the current step was saved."""


class _SigtermFlag:
    """Remembers a SIGTERM so the loop can checkpoint at the next step boundary instead of dying mid-step."""

    def __init__(self):
        self.raised = False
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no preemption handling
            self._previous = None

    def _handle(self, signum, frame) -> None:
        logging.warning("SIGTERM received: will save a checkpoint at the next step and stop")
        self.raised = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def preempted(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return self.raised or multihost_utils.reached_preemption_sync_point(step)
        return self.raised


def _process_sum(n: int) -> int:
    """The sum of ``n`` over all processes (every process must call it)."""
    if jax.process_count() == 1:
        return n
    from jax.experimental import multihost_utils

    return int(multihost_utils.process_allgather(np.int64(n)).sum())


def _finetune_config(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, ckpt_lib.Pretrained | None]:
    """Load ``config.init_from`` (if set) and adopt its input conventions into the data config."""
    if not config.init_from:
        return config, None
    pre = ckpt_lib.load_pretrained(config.init_from)
    d = config.dataset
    if (d.channel_order, tuple(d.mean), tuple(d.std)) != (pre.input["channel_order"], tuple(pre.input["mean"]), tuple(pre.input["std"])):
        logging.info("init_from %s: using its input conventions %s instead of the config's", pre.source, pre.input)
    return apply_input_conventions(config, pre.input), pre


class _Trainer:
    """The state of one run; ``run()`` trains from wherever the workdir left off."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: paths.PathLike, lock: workdir_lock.WorkdirLock | None = None,
                 allow_config_change: bool = False):  # fmt: skip
        self.config, self.workdir, self.lock = config, paths.resolve(workdir), lock
        self.allow_config_change = allow_config_change
        self.is_chief = jax.process_index() == 0
        self.mesh = parallel.make_mesh()
        self.recipe = recipe_options(config)
        self.layout = batch_layout(config.batch_size, self.mesh.size, self.recipe["grad_accum_steps"], self.recipe["bn_group_size"])
        eval_batch = config.eval_batch_size or config.batch_size
        if eval_batch % self.mesh.size:
            raise ConfigError(f"eval batch={eval_batch} is not divisible by the {self.mesh.size} devices: use a multiple of {self.mesh.size}")
        pidx, pcount = jax.process_index(), jax.process_count()
        self.train_input = data.TrainInput(config, pidx, pcount)
        self.eval_input = data.EvalInput(config, pidx, pcount)
        bad = self.eval_input.undecodable_images()  # before training: evaluation must count every image
        if total := _process_sum(len(bad)):
            raise data.bad_eval_images_error(bad, total)
        self.skipped_images: dict[str, int] = {}  # epoch -> training images skipped as undecodable
        self.steps_per_epoch = self.train_input.steps_per_epoch
        self.total_steps = self.steps_per_epoch * config.num_epochs
        self.model = create_model(config, bn_axis_name=parallel.AXIS)
        image_shape = (config.resolution, config.resolution, 3)
        shapes = jax.eval_shape(lambda: parallel.init_variables(self.model, jax.random.key(0), image_shape))
        self.tx = optim.make_optimizer(config, self.steps_per_epoch, shapes["params"])
        self.ema = config.optim.ema_decay > 0
        self.state = parallel.create_train_state(self.model, self.tx, jax.random.key(config.seed), image_shape, self.mesh, self.ema)
        self.signature = ckpt_lib.state_signature(self.state)
        groups = dict(bn_group_size=self.layout.group_size, grad_accum_steps=self.layout.micro_steps)
        self.train_step = parallel.make_train_step(
            self.model, self.tx, self.mesh, num_classes=config.model.num_classes,
            label_smoothing=config.optim.label_smoothing, ema_decay=config.optim.ema_decay, bn_train=not config.freeze_trunk,
            **groups,
        )  # fmt: skip
        self.bn_stats_step = parallel.make_bn_stats_step(self.model, self.mesh, **groups) if self.recipe["precise_bn"] else None
        self.eval_step = parallel.make_eval_step(self.model, self.mesh, num_classes=config.model.num_classes)
        self.ckpt = ckpt_lib.Checkpointer(self.workdir, config.keep_checkpoints)
        self.profiler = profiling.StepProfiler(config.get("profile_steps", ()), str(self.workdir), self.total_steps)
        self.prior_wall_time = 0.0

    def start(self, pre: ckpt_lib.Pretrained | None) -> int:
        """Restore the newest good checkpoint, else initialise (from ``pre`` when fine-tuning); returns the step."""
        restored = self.ckpt.restore_latest(self.state)
        if restored is not None:
            self.state, meta = restored
            self.prior_wall_time = float(meta.get("wall_time_s", 0.0))
            self.skipped_images = dict(meta.get("skipped_images", {}))
            step = int(ckpt_lib.host(self.state.step))
            if meta.get("steps_per_epoch") != self.steps_per_epoch:
                logging.warning(
                    "the checkpoint was written with %s steps per epoch, this config has %d (batch size or dataset "
                    "changed): the data order will not continue exactly", meta.get("steps_per_epoch"), self.steps_per_epoch,
                )  # fmt: skip
            logging.info("resumed from %s at step %d (epoch %d)", self.ckpt.directory, step, step // self.steps_per_epoch)
            return step
        if pre is not None:
            fresh = jax.tree_util.tree_map(ckpt_lib.host, self.state.variables())
            variables, reinit = ckpt_lib.merge_pretrained(fresh, pre, self.config.model)
            logging.info("initialised from %s%s", pre.source, " (head re-initialised: different number of classes)" if reinit else "")
            self.state = parallel.replicate(parallel.state_from_variables(variables, self.tx, self.ema), self.mesh)
        return 0

    def _record_config(self, step: int) -> None:
        """Write config.json; on resume first compare it with the new config (``config_diff.check_resume``) and, if
        it changed, append the old one to config_history.jsonl, so the config a run started with is never lost."""
        new, path = json.loads(self.config.to_json_best_effort()), self.workdir / "config.json"
        if step and paths.isfile(path):
            saved = paths.read_json(path)
            changes = config_diff.check_resume(str(self.workdir), saved, new, self.allow_config_change)
            if not changes:
                return
            logging.warning("resumed with a changed config: %s", config_diff.describe(changes))
            if self.is_chief:
                record = {"replaced_at_step": step, "changes": [str(c) for c in changes], "config": saved}
                paths.append_text(self.workdir / CONFIG_HISTORY, json.dumps(record) + "\n")
        if self.is_chief:
            paths.write_json(path, new)

    def save(self, step: int, metrics_: dict[str, float] | None = None) -> None:
        meta = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "global_batch": self.config.batch_size,
            "wall_time_s": self.prior_wall_time + time.perf_counter() - self.t_start,
            "signature": self.signature,
            "skipped_images": self._skipped_counts(step),
        }
        if self.lock is not None:
            self.lock.check()
        self.ckpt.save(step, self.state, meta, metrics_)
        self.out.flush()  # on object storage the records up to this checkpoint go out with it

    def _skipped_counts(self, step: int) -> dict[str, int]:
        """Training images skipped as undecodable per epoch (all processes), the current epoch's so far included."""
        counts = dict(self.skipped_images)
        if n := _process_sum(len(self.train_input.skipped)):
            epoch = str((step - 1) // self.steps_per_epoch)
            counts[epoch] = counts.get(epoch, 0) + n
        return counts

    def _end_epoch_skips(self, step: int) -> None:
        self.skipped_images = self._skipped_counts(step)
        self.train_input.skipped = []
        epoch = (step - 1) // self.steps_per_epoch
        if n := self.skipped_images.get(str(epoch), 0):
            logging.warning("epoch %d: skipped %d training images that cannot be read or decoded (each file is logged above)", epoch, n)

    def evaluate(self, step: int) -> dict[str, float]:
        """Evaluate (and the EMA weights, if any), append the JSON lines, write the scalars."""
        epoch = step // self.steps_per_epoch
        logged = {r["step"] for r in self.out.records(metrics.EVAL_FILE)}
        result = {}
        for ema, fname in ((False, metrics.EVAL_FILE), (True, metrics.EVAL_EMA_FILE)):
            if ema and not self.ema:
                continue
            t = time.perf_counter()
            out = run_evaluation(self.eval_step, self.state.variables(ema), self.eval_input, self.mesh)
            record = {"step": step, "epoch": epoch, "top1_err": out["top1_err"], "top5_err": out["top5_err"], "loss": out["loss"]}
            prefix = "eval_ema" if ema else "eval"
            logging.info(
                "%s epoch %d step %d: top-1 err %.2f%%, top-5 err %.2f%%, loss %.4f (%d images, %.1fs)",
                prefix, epoch, step, out["top1_err"], out["top5_err"], out["loss"], out["count"], time.perf_counter() - t,
            )  # fmt: skip
            self.out.scalars(step, {f"{prefix}/{k}": v for k, v in record.items() if k not in ("step", "epoch")})
            if step not in logged:  # a resumed run re-evaluates a step it already logged
                self.out.append(fname, record)
            if not ema:
                result = record
        return result

    def _check_finite(self, pending: list[dict[str, jax.Array]], step: int) -> None:
        if pending and not all(bool(ckpt_lib.host(m["finite"])) for m in pending):
            last = self.ckpt.steps()
            raise NonFiniteLossError(
                f"the training loss or the weights became NaN or inf by step {step}; stopped without saving. The last "
                f"good checkpoint is {f'step {last[-1]} in {self.ckpt.directory}' if last else 'none'}. Lower "
                "config.optim.base_lr or add warmup (config.optim.warmup_epochs), then rerun to resume from it"
            )

    def run(self, pre: ckpt_lib.Pretrained | None) -> dict[str, Any]:
        config = self.config
        self.t_start = time.perf_counter()
        step = self.start(pre)
        self._record_config(step)  # before anything is written: a refused resume leaves the workdir as it was
        cx = complexity.count(config.model, config.resolution)
        trained = self.state.params["head"] if config.freeze_trunk else self.state.params  # a linear probe trains the head
        cx["trainable_params"] = sum(int(x.size) for x in jax.tree_util.tree_leaves(trained))
        # JSON lines and TensorBoard events (written by process 0), cut back to the step this run resumes from.
        self.out = metrics.RunWriter(self.workdir, step, write=self.is_chief)
        self.out.hparams({"params": cx["params"], "trainable_params": cx["trainable_params"], "flops": cx["flops"],
                          "global_batch": config.batch_size, "num_epochs": config.num_epochs})  # fmt: skip
        lay = self.layout
        logging.info(
            "model: %s params%s, %s flops (mult-adds at %d px); %d devices in %d processes; %d steps/epoch of %d images "
            "(%d micro-batch(es) of %d per device; BN statistics over %d groups of %d images); %d epochs; starting at step %d",
            f"{cx['params']:,}", f" ({cx['trainable_params']:,} trained: the head, config.freeze_trunk)" if config.freeze_trunk else "",
            f"{cx['flops']:,}", config.resolution, self.mesh.size, jax.process_count(),
            self.steps_per_epoch, config.batch_size, lay.micro_steps, lay.micro_batch, lay.num_groups, lay.group_size,
            config.num_epochs, step,
        )  # fmt: skip
        logging.info("learning rate: %s", describe_lr(config))
        sigterm = _SigtermFlag()
        try:
            self._loop(step, sigterm)
        finally:
            self.profiler.close()
            sigterm.restore()
            self.ckpt.wait()
            self.out.flush()
        return self._finish(cx)

    def _loop(self, step: int, sigterm: _SigtermFlag) -> None:
        config = self.config
        progress = metrics.Progress(self.total_steps, step, config.batch_size)
        pending: list[dict[str, jax.Array]] = []
        if step and step % self.steps_per_epoch == 0:
            # A checkpoint taken at an epoch's end may predate that epoch's precise BN (preemption); redoing it is
            # harmless: the statistics depend only on the weights and the (seeded) images.
            self._precise_bn(step // self.steps_per_epoch - 1)
        while step < self.total_steps:
            epoch, offset = divmod(step, self.steps_per_epoch)
            batches = data.device_prefetch(self.train_input.epoch(epoch, offset), self.mesh, config.dataset.prefetch)
            for batch in batches:
                self.state, m = self.profiler.run(step, self.train_step, self.state, batch)
                pending.append(m)
                step += 1
                if step % config.log_every_steps == 0 or step % self.steps_per_epoch == 0:
                    self._check_finite(pending, step)
                    self._log_train(step, pending, progress.report(step))
                    pending = []
                if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and step % self.steps_per_epoch:
                    self._check_finite(pending, step)
                    self.save(step)
                if sigterm.preempted(step):
                    self._check_finite(pending, step)
                    self.save(step)
                    self.ckpt.wait()
                    raise Preempted(f"preempted at step {step}; checkpoint saved in {self.ckpt.directory}: rerun the same command to resume")
            self._end_epoch_skips(step)
            self._precise_bn(epoch)
            epoch += 1
            last = step == self.total_steps
            record = None
            if last or (config.eval_every_epochs and epoch % config.eval_every_epochs == 0):
                record = self.evaluate(step)
            self.save(step, {"top1_err": record["top1_err"]} if record else None)
            progress.restart(step)
        evals = self.out.records(metrics.EVAL_FILE)
        if not evals or evals[-1]["step"] != step:
            self.evaluate(step)  # the final evaluation's line is missing (e.g. eval_metrics.jsonl was removed)

    def _precise_bn(self, epoch: int) -> None:
        """With config.precise_bn: recompute the BN running statistics on the first images of ``epoch``."""
        if self.bn_stats_step is None:
            return
        t = time.perf_counter()
        count = precise_bn.num_batches(self.recipe["precise_bn_images"], self.config.batch_size, self.steps_per_epoch)

        def batches():
            return data.device_prefetch(self.train_input.epoch(epoch), self.mesh, self.config.dataset.prefetch)

        skipped = self.train_input.skipped  # re-reading images must not count their undecodable ones twice
        self.state = precise_bn.apply_precise_bn(self.state, self.bn_stats_step, batches, count)
        self.train_input.skipped = skipped
        logging.info("precise BN: running statistics recomputed on %d images (%.1fs)", count * self.config.batch_size, time.perf_counter() - t)

    def _log_train(self, step: int, pending: list[dict[str, jax.Array]], speed: dict[str, float]) -> None:
        fetched = [{k: float(ckpt_lib.host(v)) for k, v in m.items()} for m in pending]
        count = sum(m["count"] for m in fetched)
        loss = sum(m["loss"] * m["count"] for m in fetched) / count
        top1_err = 100.0 * (1.0 - sum(m["correct"] for m in fetched) / count)
        epoch = step / self.steps_per_epoch
        lr = optim.lr_at_step(self.config, step - 1, self.steps_per_epoch)
        record = {"step": step, "epoch": epoch, "loss": loss, "top1_err": top1_err, "lr": lr,
                  "images_per_s": speed["images_per_s"], "steps_per_s": speed["steps_per_s"]}  # fmt: skip
        logging.info(
            "step %d/%d epoch %.2f/%d: loss %.4f, top-1 err %.2f%%, lr %.5g | %.1f images/s, %.2f steps/s, ETA %s",
            step, self.total_steps, epoch, self.config.num_epochs, loss, top1_err, lr, speed["images_per_s"],
            speed["steps_per_s"], metrics.format_eta(speed["eta_s"]),
        )  # fmt: skip
        self.out.scalars(step, {f"train/{k}": v for k, v in record.items() if k != "step"} | {"train/eta_s": speed["eta_s"]})
        self.out.append(metrics.TRAIN_FILE, record)

    def _finish(self, cx: dict[str, int]) -> dict[str, Any]:
        evals = self.out.records(metrics.EVAL_FILE)
        final = evals[-1]
        summary = {
            "status": "done",
            "epochs": self.config.num_epochs,
            "steps": self.total_steps,
            "final": {k: final[k] for k in ("top1_err", "top5_err", "loss")},
            "best_top1_err": min(r["top1_err"] for r in evals),
            "wall_time_s": self.prior_wall_time + time.perf_counter() - self.t_start,
            "params": cx["params"],
            "trainable_params": cx["trainable_params"],
            "flops": cx["flops"],
            "skipped_images": {"total": sum(self.skipped_images.values()), "per_epoch": self.skipped_images},
        }
        if self.is_chief:
            paths.write_json(self.workdir / "summary.json", summary)
            plot = metrics.plot_curves(self.workdir)
            logging.info("done: final top-1 err %.2f%% (best %.2f%%), %.0fs; curves in %s",
                         final["top1_err"], summary["best_top1_err"], summary["wall_time_s"], plot)  # fmt: skip
        return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (resuming from its checkpoints), evaluating as configured; returns summary.json's
    content. Resuming with a config that changes what is trained needs ``allow_config_change`` (regnet_jax.config_diff).
    Raises ConfigError (bad config or config change, data not prepared, unusable checkpoint), NonFiniteLossError,
    Preempted."""
    metrics.quiet_library_logs()
    config = copy.deepcopy(config)
    validate_config(config)
    data.check_dataset(config)  # before anything else: fail fast with the preparation instructions
    config, pre = _finetune_config(config)
    paths.makedirs(workdir)
    with _one_run_per_workdir(workdir) as lock:
        trainer = _Trainer(config, workdir, lock, allow_config_change)
        try:
            return trainer.run(pre)
        finally:
            trainer.ckpt.close()


@contextlib.contextmanager
def _one_run_per_workdir(workdir: paths.PathLike):
    """Process 0 holds the workdir's lock while the run lasts; every process stops if another live run holds it."""
    lock = workdir_lock.WorkdirLock(workdir) if jax.process_index() == 0 else None
    error = None
    if lock is not None:
        try:
            lock.acquire()
        except ConfigError as e:  # busy, or the workdir cannot be written (StorageError)
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if multihost_utils.broadcast_one_to_all(np.int32(error is not None)) and error is None:
            holder = workdir_lock.WorkdirLock(workdir).read()
            error = ConfigError(f"process 0 could not take {workdir}" + (f": it is in use by {workdir_lock.describe(holder)}" if holder else "; see its error"))
    if error is not None:
        raise error
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def _define_flags() -> flags.FlagValues:
    """The command-line flags (defined only when run as a program, so importing this module defines none)."""
    define_config_flag("config", "Training config file, e.g. configs/regnety_4gf.py or configs/regnety_4gf.py:25ep.")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the resolved config (resumes from it).")
    flags.DEFINE_bool("allow_config_change", False, "Resume a run with a config that changes what it trains (the old "
                      "config is kept in WORKDIR/config_history.jsonl); without it such a resume is refused.")
    flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize (default: only on a detected cluster launch).")
    flags.DEFINE_string("coordinator_address", "", "host:port of process 0, where JAX cannot detect it.")
    flags.DEFINE_integer("num_processes", 0, "Number of processes, where JAX cannot detect it.")
    flags.DEFINE_integer("process_id", -1, "This process's index, where JAX cannot detect it.")
    flags.DEFINE_integer("heartbeat_timeout_s", parallel.HEARTBEAT_TIMEOUT_S, "Multi-process: a process silent this long is "
                         "taken for dead and JAX ends the others (jax.distributed's heartbeat timeout).")
    return flags.FLAGS


def _exit_multiprocess_error(e: Exception) -> NoReturn:
    """End this process of a multi-process run at once, with one line saying why (traceback first if unexpected).

    Exiting normally would hang: JAX's exit-time shutdown waits for every other process (for a dead one, until the
    heartbeat timeout). Exiting at once closes this process's connections, so the others stop at their next step."""
    where = f"process {jax.process_index()} of {jax.process_count()}"
    if isinstance(e, jax.errors.JaxRuntimeError):
        code, message = 1, (
            f"{where}: a step shared by all processes failed ({str(e).strip().splitlines()[0]}); another process has "
            "probably died (see its log). Rerun the same command on every host to resume from the last checkpoint"
        )
    elif isinstance(e, (ConfigError, WeightsError)):
        code, message = 2, f"{where}: {e}"
    else:
        traceback.print_exc()
        code, message = 1, f"{where}: {type(e).__name__}: {e}"
    print(f"error: {message}", file=sys.stderr)
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str]) -> None:
    del argv
    FLAGS = flags.FLAGS
    if FLAGS.config is None or not FLAGS.workdir:
        raise ConfigError("--config and --workdir are both required, e.g. --config=configs/quickstart.py --workdir=/tmp/quickstart")
    parallel.maybe_initialize_distributed(
        FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.heartbeat_timeout_s
    )
    try:
        summary = train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.allow_config_change)
    except Preempted as e:
        logging.warning("%s", e)
        sys.exit(EXIT_PREEMPTED)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        if jax.process_count() == 1:
            raise
        _exit_multiprocess_error(e)
    if jax.process_index() == 0:
        f = summary["final"]
        print(f"final: top-1 error {f['top1_err']:.2f}% (accuracy {100 - f['top1_err']:.2f}%), top-5 error {f['top5_err']:.2f}%, "
              f"loss {f['loss']:.4f}; best top-1 error {summary['best_top1_err']:.2f}%; {summary['wall_time_s']:.0f}s")  # fmt: skip


if __name__ == "__main__":
    _define_flags()
    run(main, user_errors=(WeightsError,))
