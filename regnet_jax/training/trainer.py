"""The training loop: data-parallel training with exact evaluation, checkpoints and run records.

    summary = train_and_evaluate(config, workdir)      # python -m regnet_jax.train

Resumes from the workdir's newest good checkpoint if there is one; a config that changes what the run trains is
refused there unless ``allow_config_change`` (``regnet_jax.config.diff``). Every process of a multi-host run calls it
with the same arguments. Writes into the workdir (local or gs://, through ``regnet_jax.core.paths``) the files
``training.records`` lists, checkpoints/ (``training.checkpoint``) and lock.json while it runs (one run per workdir:
``training.workdir_lock``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from regnet_jax import data
from regnet_jax.config import ConfigError, describe_lr, validate_config
from regnet_jax.core import distributed, logs, paths
from regnet_jax.core.distributed import (
    AXIS,
    batch_layout,
    broadcast_from_process_0,
    divide_batch,
    make_mesh,
    process_sum,
    replicate,
    to_host,
)
from regnet_jax.core.memory import release_free_heap
from regnet_jax.models import create_model
from regnet_jax.models.complexity import count
from regnet_jax.training import precise_bn, records, steps
from regnet_jax.training.checkpoint import Checkpointer, state_signature
from regnet_jax.training.evaluation import apply_input_conventions, run_evaluation
from regnet_jax.training.optimizer import lr_at_step, make_optimizer
from regnet_jax.training.plots import plot_curves
from regnet_jax.training.preemption import Interrupted, StopSignals
from regnet_jax.training.profiling import StepProfiler
from regnet_jax.training.progress import Progress, format_eta
from regnet_jax.training.workdir_lock import WorkdirLock, describe
from regnet_jax.weights.pretrained import Pretrained, load_pretrained, merge_pretrained


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; nothing was saved after the last finite step."""


def _finetune_config(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Pretrained | None]:
    """Load ``config.init_from`` (if set) and adopt its input conventions into the data config."""
    if not config.init_from:
        return config, None
    pretrained = load_pretrained(config.init_from)
    d, want = config.dataset, pretrained.input
    if (d.channel_order, tuple(d.mean), tuple(d.std)) != (
        want["channel_order"],
        tuple(want["mean"]),
        tuple(want["std"]),
    ):
        logging.info("init_from %s: using its input conventions %s instead of the config's", pretrained.source, want)
    return apply_input_conventions(config, want), pretrained


class _Trainer:
    """The state of one run; ``run()`` trains from wherever the workdir left off."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: paths.PathLike, lock: WorkdirLock | None = None,
                 allow_config_change: bool = False):  # fmt: skip
        """``config`` is complete (``validate_config``'s)."""
        self.config, self.workdir, self.lock = config, paths.resolve(workdir), lock
        self.allow_config_change = allow_config_change
        self.is_chief = jax.process_index() == 0
        self.mesh = make_mesh()
        self.layout = batch_layout(config.batch_size, self.mesh.size, config.grad_accum_steps, config.bn_group_size)
        eval_batch, devices = config.eval_batch_size or config.batch_size, self.mesh.size
        divide_batch(
            eval_batch,
            devices,
            f"eval batch={eval_batch} is not divisible by the {devices} devices: use a multiple of {devices}",
        )
        pidx, pcount = jax.process_index(), jax.process_count()
        self.train_input = data.TrainInput(config, pidx, pcount)  # it counts the training images it skips
        self.eval_input = data.EvalInput(config, pidx, pcount)
        bad = self.eval_input.undecodable_images()  # before training: evaluation must count every image
        if total := process_sum(len(bad)):
            raise data.bad_eval_images_error(bad, total)
        self.steps_per_epoch = self.train_input.steps_per_epoch
        self.total_steps = self.steps_per_epoch * config.num_epochs
        self.model = create_model(config, bn_axis_name=AXIS)
        image_shape = (config.resolution, config.resolution, 3)
        shapes = jax.eval_shape(lambda: steps.init_variables(self.model, jax.random.key(0), image_shape))
        self.tx = make_optimizer(config, self.steps_per_epoch, shapes["params"])
        self.ema = config.optim.ema_decay > 0
        self.state = steps.create_train_state(
            self.model, self.tx, jax.random.key(config.seed), image_shape, self.mesh, self.ema
        )
        self.signature = state_signature(self.state)
        groups = dict(bn_group_size=self.layout.group_size, grad_accum_steps=self.layout.micro_steps)
        self.train_step = steps.make_train_step(
            self.model, self.tx, self.mesh, num_classes=config.model.num_classes,
            label_smoothing=config.optim.label_smoothing, ema_decay=config.optim.ema_decay, bn_train=not config.freeze_trunk,
            **groups,
        )  # fmt: skip
        self.bn_stats_step = steps.make_bn_stats_step(self.model, self.mesh, **groups) if config.precise_bn else None
        self.eval_step = steps.make_eval_step(self.model, self.mesh, num_classes=config.model.num_classes)
        self.checkpointer = Checkpointer(self.workdir, config.keep_checkpoints)
        self.profiler = StepProfiler(config.profile_steps, str(self.workdir), self.total_steps)
        self.prior_wall_time = 0.0  # of the runs this one resumes
        self.t_start = time.perf_counter()  # run() starts the clock again: this run's wall time counts from there
        self.writer: records.RunWriter | None = None  # run() opens it at the step it resumes from

    def start(self, pretrained: Pretrained | None) -> int:
        """Restore the newest good checkpoint, else initialise (from ``pretrained`` when fine-tuning); returns the step."""
        restored = self.checkpointer.restore_latest(self.state)
        if restored is not None:
            self.state, meta = restored
            self.prior_wall_time = float(meta.get("wall_time_s", 0.0))
            self.train_input.skipped_images = dict(meta.get("skipped_images", {}))
            step = int(to_host(self.state.step))
            if meta.get("steps_per_epoch") != self.steps_per_epoch:
                logging.warning(
                    "the checkpoint was written with %s steps per epoch, this config has %d (batch size or dataset "
                    "changed): the data order will not continue exactly", meta.get("steps_per_epoch"), self.steps_per_epoch,
                )  # fmt: skip
            logging.info(
                "resumed from %s at step %d (epoch %d)", self.checkpointer.directory, step, step // self.steps_per_epoch
            )
            return step
        if pretrained is not None:
            fresh = jax.tree_util.tree_map(to_host, self.state.variables())
            variables, reinit = merge_pretrained(fresh, pretrained, self.config.model)
            logging.info(
                "initialised from %s%s",
                pretrained.source,
                " (head re-initialised: different number of classes)" if reinit else "",
            )
            self.state = replicate(steps.state_from_variables(variables, self.tx, self.ema), self.mesh)
        return 0

    def wall_time(self) -> float:
        """Seconds of training so far, the runs this one resumes included."""
        return self.prior_wall_time + time.perf_counter() - self.t_start

    def save(self, step: int, metrics: dict[str, float] | None = None) -> None:
        meta = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "global_batch": self.config.batch_size,
            "wall_time_s": self.wall_time(),
            "signature": self.signature,
            "skipped_images": self.train_input.skipped_counts((step - 1) // self.steps_per_epoch),
        }
        if self.lock is not None:
            self.lock.check()
        self.checkpointer.save(step, self.state, meta, metrics)
        if self.writer is not None:
            self.writer.flush()  # on object storage the records up to this checkpoint go out with it

    def _end_epoch_skips(self, step: int) -> None:
        epoch = (step - 1) // self.steps_per_epoch
        if n := self.train_input.end_epoch(epoch):
            logging.warning(
                "epoch %d: skipped %d training images that cannot be read or decoded (each file is logged above)",
                epoch,
                n,
            )

    def evaluate(self, step: int) -> dict[str, float]:
        """Evaluate (and the EMA weights, if any), append the JSON lines, write the scalars."""
        epoch = step // self.steps_per_epoch
        logged = {r["step"] for r in self.writer.records(records.EVAL_FILE)}
        result = {}
        for ema, fname in ((False, records.EVAL_FILE), (True, records.EVAL_EMA_FILE)):
            if ema and not self.ema:
                continue
            t = time.perf_counter()
            out = run_evaluation(self.eval_step, self.state.variables(ema), self.eval_input, self.mesh)
            record = {
                "step": step,
                "epoch": epoch,
                "top1_err": out["top1_err"],
                "top5_err": out["top5_err"],
                "loss": out["loss"],
            }
            prefix = "eval_ema" if ema else "eval"
            logging.info(
                "%s epoch %d step %d: top-1 err %.2f%%, top-5 err %.2f%%, loss %.4f (%d images, %.1fs)",
                prefix, epoch, step, out["top1_err"], out["top5_err"], out["loss"], out["count"], time.perf_counter() - t,
            )  # fmt: skip
            self.writer.scalars(step, {f"{prefix}/{k}": v for k, v in record.items() if k not in ("step", "epoch")})
            if step not in logged:  # a resumed run re-evaluates a step it already logged
                self.writer.append(fname, record)
            if not ema:
                result = record
        distributed.report_progress()
        return result

    def _check_finite(self, pending: list[dict[str, jax.Array]], step: int) -> None:
        if pending and not all(bool(to_host(m["finite"])) for m in pending):
            last = self.checkpointer.steps()
            raise NonFiniteLossError(
                f"the training loss or the weights became NaN or inf by step {step}; stopped without saving. The last "
                f"good checkpoint is {f'step {last[-1]} in {self.checkpointer.directory}' if last else 'none'}. Lower "
                "config.optim.base_lr or add warmup (config.optim.warmup_epochs), then rerun to resume from it"
            )

    def run(self, pretrained: Pretrained | None, stop: StopSignals) -> dict[str, Any]:
        config = self.config
        self.t_start = time.perf_counter()
        step = self.start(pretrained)
        # Before anything is written: a refused resume leaves the workdir as it was.
        records.record_config(self.workdir, config, step, allow_change=self.allow_config_change, write=self.is_chief)
        counts = count(config.model, config.resolution)
        trained = (
            self.state.params["head"] if config.freeze_trunk else self.state.params
        )  # a linear probe trains the head
        counts["trainable_params"] = sum(int(x.size) for x in jax.tree_util.tree_leaves(trained))
        # JSON lines and TensorBoard events (written by process 0), cut back to the step this run resumes from.
        self.writer = records.RunWriter(self.workdir, step, write=self.is_chief)
        self.writer.hparams({"params": counts["params"], "trainable_params": counts["trainable_params"], "flops": counts["flops"],
                             "global_batch": config.batch_size, "num_epochs": config.num_epochs})  # fmt: skip
        layout = self.layout
        logging.info(
            "model: %s params%s, %s flops (mult-adds at %d px); %d devices in %d processes; %d steps/epoch of %d images "
            "(%d micro-batch(es) of %d per device; BN statistics over %d groups of %d images); %d epochs; starting at step %d",
            f"{counts['params']:,}", f" ({counts['trainable_params']:,} trained: the head, config.freeze_trunk)" if config.freeze_trunk else "",
            f"{counts['flops']:,}", config.resolution, self.mesh.size, jax.process_count(), self.steps_per_epoch,
            config.batch_size, layout.micro_steps, layout.micro_batch, layout.num_groups, layout.group_size,
            config.num_epochs, step,
        )  # fmt: skip
        logging.info("learning rate: %s", describe_lr(config))
        try:
            with stop.training():
                self._loop(step, stop)
        finally:
            self.profiler.close()
            self.checkpointer.wait()
            self.writer.flush()
        return self._finish(counts)

    def _loop(self, step: int, stop: StopSignals) -> None:
        config = self.config
        progress = Progress(self.total_steps, step, config.batch_size)
        pending: list[dict[str, jax.Array]] = []
        first_step = step
        if step and step % self.steps_per_epoch == 0:
            # A run stopped (preempted, Ctrl-C) after an epoch's last step saved before that epoch's end: finish it now
            # (the final evaluation: after the loop). Redoing precise BN is harmless: the statistics depend only on the
            # weights and the (seeded) images.
            epoch = step // self.steps_per_epoch
            self._precise_bn(epoch - 1)
            evaluated = {r["step"] for r in self.writer.records(records.EVAL_FILE)}
            if step < self.total_steps and self._evaluates_after(epoch) and step not in evaluated:
                self.evaluate(step)
        while step < self.total_steps:
            epoch, offset = divmod(step, self.steps_per_epoch)
            batches = data.device_prefetch(self.train_input.epoch(epoch, offset), self.mesh, config.dataset.prefetch)
            for batch in batches:
                self.state, m = self.profiler.run(step, self.train_step, self.state, batch)
                if step == first_step:  # compiled and run once: the memory the compiler and that run freed goes back
                    jax.block_until_ready(m)
                    release_free_heap()
                pending.append(m)
                step += 1
                if step % config.log_every_steps == 0 or step % self.steps_per_epoch == 0:
                    self._check_finite(pending, step)
                    self._log_train(step, pending, progress.report(step))
                    pending = []
                if (
                    config.checkpoint_every_steps
                    and step % config.checkpoint_every_steps == 0
                    and step % self.steps_per_epoch
                ):
                    self._check_finite(pending, step)
                    self.save(step)
                if stop.preempted(step):
                    self._check_finite(pending, step)
                    self.save(step)
                    self.checkpointer.wait()
                    raise stop.stop_error(step, str(self.checkpointer.directory))
            self._end_epoch_skips(step)
            self._precise_bn(epoch)
            epoch += 1
            record = self.evaluate(step) if step == self.total_steps or self._evaluates_after(epoch) else None
            self.save(step, {"top1_err": record["top1_err"]} if record else None)
            if (
                stop.signum is not None and not stop.multi_process
            ):  # asked during the epoch's end: that checkpoint is saved
                self.checkpointer.wait()
                raise stop.stop_error(step, str(self.checkpointer.directory))
            progress.restart(step)
        evals = self.writer.records(records.EVAL_FILE)
        if not evals or evals[-1]["step"] != step:
            self.evaluate(step)  # the final evaluation's line is missing (e.g. eval_metrics.jsonl was removed)

    def _evaluates_after(self, epochs: int) -> bool:
        """Whether the schedule evaluates once ``epochs`` epochs are trained (the last one always is)."""
        return bool(self.config.eval_every_epochs) and epochs % self.config.eval_every_epochs == 0

    def _precise_bn(self, epoch: int) -> None:
        """With config.precise_bn: recompute the BN running statistics on the first images of ``epoch``."""
        if self.bn_stats_step is None:
            return
        t = time.perf_counter()
        num_batches = precise_bn.num_batches(
            self.config.precise_bn_images, self.config.batch_size, self.steps_per_epoch
        )

        def batches():
            return data.device_prefetch(self.train_input.epoch(epoch), self.mesh, self.config.dataset.prefetch)

        with self.train_input.rereading():
            self.state = precise_bn.apply_precise_bn(self.state, self.bn_stats_step, batches, num_batches)
        logging.info(
            "precise BN: running statistics recomputed on %d images (%.1fs)",
            num_batches * self.config.batch_size,
            time.perf_counter() - t,
        )

    def _log_train(self, step: int, pending: list[dict[str, jax.Array]], speed: dict[str, float]) -> None:
        fetched = [{k: float(to_host(v)) for k, v in m.items()} for m in pending]
        images = sum(m["count"] for m in fetched)
        loss = sum(m["loss"] * m["count"] for m in fetched) / images
        top1_err = 100.0 * (1.0 - sum(m["correct"] for m in fetched) / images)
        epoch = step / self.steps_per_epoch
        lr = lr_at_step(self.config, step - 1, self.steps_per_epoch)
        record = {"step": step, "epoch": epoch, "loss": loss, "top1_err": top1_err, "lr": lr,
                  "images_per_s": speed["images_per_s"], "steps_per_s": speed["steps_per_s"]}  # fmt: skip
        logging.info(
            "step %d/%d epoch %.2f/%d: loss %.4f, top-1 err %.2f%%, lr %.5g | %.1f images/s, %.2f steps/s, ETA %s",
            step, self.total_steps, epoch, self.config.num_epochs, loss, top1_err, lr, speed["images_per_s"],
            speed["steps_per_s"], format_eta(speed["eta_s"]),
        )  # fmt: skip
        self.writer.scalars(
            step, {f"train/{k}": v for k, v in record.items() if k != "step"} | {"train/eta_s": speed["eta_s"]}
        )
        self.writer.append(records.TRAIN_FILE, record)
        distributed.report_progress()

    def _finish(self, counts: dict[str, int]) -> dict[str, Any]:
        evals = self.writer.records(records.EVAL_FILE)
        skipped = self.train_input.skipped_images
        final = evals[-1]
        summary = {
            "status": "done",
            "epochs": self.config.num_epochs,
            "steps": self.total_steps,
            "final": {k: final[k] for k in ("top1_err", "top5_err", "loss")},
            "best_top1_err": min(r["top1_err"] for r in evals),
            "wall_time_s": self.wall_time(),
            "params": counts["params"],
            "trainable_params": counts["trainable_params"],
            "flops": counts["flops"],
            "skipped_images": {"total": sum(skipped.values()), "per_epoch": skipped},
        }
        if self.is_chief:
            paths.write_json(self.workdir / records.SUMMARY_FILE, summary)
            plot = plot_curves(self.workdir)
            logging.info("done: final top-1 err %.2f%% (best %.2f%%), %.0fs; curves in %s",
                         final["top1_err"], summary["best_top1_err"], summary["wall_time_s"], plot)  # fmt: skip
        return summary


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (resuming from its checkpoints), evaluating as configured; returns summary.json's
    content. Resuming with a config that changes what is trained needs ``allow_config_change`` (regnet_jax.config.diff).
    Raises ConfigError and the other UserErrors (bad config or config change, data not prepared, unusable checkpoint or
    weights), NonFiniteLossError, Preempted (SIGTERM), Interrupted (Ctrl-C; a KeyboardInterrupt): see
    ``training.preemption``."""
    logs.quiet_library_logs()
    stop = StopSignals(str(workdir))  # Ctrl-C from here on: one line (training.preemption)
    try:
        config = validate_config(config)  # a complete copy
        data.check_dataset(config)  # before anything else: fail fast with the preparation instructions
        config, pretrained = _finetune_config(config)
        paths.makedirs(workdir)
        with _one_run_per_workdir(workdir) as lock:
            trainer = _Trainer(config, workdir, lock, allow_config_change)
            try:
                return trainer.run(pretrained, stop)
            finally:
                trainer.checkpointer.close()
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted):
            raise
        raise Interrupted(
            f"interrupted (Ctrl-C) {'after the last step, whose checkpoint is saved' if stop.finishing else 'before the first step: nothing new to save'}; "
            f"rerun the same command to {'finish' if stop.finishing else 'continue'} ({workdir})"
        ) from None
    finally:
        stop.restore()


@contextlib.contextmanager
def _one_run_per_workdir(workdir: paths.PathLike):
    """Process 0 holds the workdir's lock while the run lasts; every process stops if another live run holds it."""
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    error = None
    if lock is not None:
        try:
            lock.acquire()
        except ConfigError as e:  # busy, or the workdir cannot be written (StorageError)
            error = e
    if broadcast_from_process_0(int(error is not None)) and error is None:  # another process: process 0's lock failed
        holder = WorkdirLock(workdir).read()
        error = ConfigError(
            f"process 0 could not take {workdir}"
            + (f": it is in use by {describe(holder)}" if holder else "; see its error")
        )
    if error is not None:
        raise error
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
