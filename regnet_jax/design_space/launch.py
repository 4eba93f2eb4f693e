"""``launch``: train a sweep's models, resumably, several at once across the machine's devices.

Each model trains in its own process (``python -m regnet_jax.train --config=DIR/configs/ID.py --workdir=DIR/runs/ID``),
or, with ``in_process``, inside the launcher (saves the ~20 s of imports per model that dominate tiny CPU sweeps).

* Resumable: a model whose ``runs/ID/summary.json`` says ``done`` is skipped; an interrupted one resumes from its
  checkpoints (the trainer does that). A per-model lock (``runs/ID/launcher.lock.json``, a
  ``regnet_jax.training.workdir_lock``) keeps two launchers, e.g. on several machines sharing the directory or a bucket, from
  training the same model at once.
* Failures are retried up to ``max_retry`` times per launch; exit status 2 (bad config or data) is not retried,
  because it would fail the same way. Every attempt is recorded in ``runs/ID/launch.json``, its output in
  ``runs/ID/train.log``.
* The sweep directory may be on ``gs://`` (``regnet_jax.core.paths``): the trainers then read a local copy of their config
  and their output is collected in a local file, appended to ``runs/ID/train.log`` when the attempt ends.
* Devices: ``auto`` runs one model per GPU (``CUDA_VISIBLE_DEVICES``) when ``nvidia-smi`` lists GPUs, else one
  model at a time; ``gpu:0,1,2,3`` / ``tpu:0,1,2,3`` name them; ``none`` leaves the environment alone.
* Ctrl-C: the launcher starts no more models and passes the Ctrl-C on to its trainers (each runs in its own process
  group, so a terminal's Ctrl-C reaches the launcher only): each saves a checkpoint at its next step and stops; then
  one line says how to resume (rerun the same command), exit status 130. A second Ctrl-C kills the trainers at once
  (they resume from their previous checkpoints).
* If the launcher dies (even by SIGKILL) its trainers get SIGTERM (Linux ``PR_SET_PDEATHSIG``), checkpoint and stop.
* The trainers get the launcher's ``--compilation_cache`` (a ``--trainer`` command gets a named directory or ``off``
  through JAX's variables), so a retry or a model of the same shape loads its compiled steps
  (``regnet_jax.core.compilation_cache``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

from regnet_jax.config import ConfigError, smoke
from regnet_jax.core import compilation_cache as xla_cache
from regnet_jax.core import interrupts, paths
from regnet_jax.core.cli import EXIT_USAGE
from regnet_jax.core.errors import UserError
from regnet_jax.design_space.layout import SweepDir, SweepError, model_id, read_json, write_json
from regnet_jax.training import workdir_lock
from regnet_jax.training.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED, Interrupted, Preempted
from regnet_jax.training.progress import format_eta
from regnet_jax.training.records import SUMMARY_FILE, TRAIN_FILE, read_jsonl

EXIT_BAD_INPUT = EXIT_USAGE  # the trainer's status for a bad config, missing data or an unusable checkpoint
TPU_BASE_PORT = 8476
LAUNCH_LOCK = "launcher.lock.json"


@dataclasses.dataclass
class LaunchOptions:
    """How to launch (see ``python -m regnet_jax.sweep launch --help``)."""

    parallel: int = 0  # models at once; 0 = one per device (1 without accelerators)
    devices: str = "auto"  # 'auto', 'none', 'cpu', 'gpu:0,1,...', 'tpu:0,1,...'
    max_retry: int = 3
    only: tuple[str, ...] = ()  # model ids or indices
    shard: str = ""  # 'i/n': the models whose index is i mod n
    trainer: str = ""  # command that trains one config; '' = this Python's regnet_jax.train
    in_process: bool = False
    heartbeat_s: float = 60.0
    compilation_cache: str = xla_cache.AUTO  # the trainers' --compilation_cache (DIR, auto or off)
    poll_s: float = 0.5


def is_done(sweep_dir: SweepDir, mid: str) -> bool:
    """Whether the model's run finished (its summary.json says done)."""
    try:
        return read_json(paths.join(sweep_dir.run_dir(mid), SUMMARY_FILE)).get("status") == "done"
    except (OSError, ValueError):
        return False


def select_models(sweep_dir: SweepDir, only: tuple[str, ...] = (), shard: str = "") -> list[str]:
    """The sweep's model ids restricted to ``only`` (ids or indices) and to shard 'i/n'."""
    ids = sweep_dir.model_ids()
    if only:
        wanted = {model_id(int(x)) for x in only}
        missing = sorted(wanted - set(ids))
        if missing:
            raise ConfigError(
                f"--only names models {missing} that {sweep_dir.root} does not have (it has {ids[0]}..{ids[-1]})"
            )
        ids = [i for i in ids if i in wanted]
    if shard:
        try:
            k, n = (int(x) for x in shard.split("/"))
            assert 0 <= k < n
        except (ValueError, AssertionError):
            raise ConfigError(f"--shard={shard!r}: write i/n with 0 <= i < n, e.g. --shard=0/4") from None
        ids = [i for i in ids if int(i) % n == k]
    return ids


def _gpu_ids() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def device_slots(devices: str, parallel: int) -> tuple[list[dict[str, str]], str]:
    """One environment per concurrent slot, and a description. Slots cycle over the devices when parallel > #devices."""
    kind, _, ids = devices.partition(":")
    if kind == "auto":
        gpus = _gpu_ids()
        kind, ids = ("gpu", ",".join(gpus)) if gpus else ("none", "")
    if kind in ("none", "cpu"):
        env = {"JAX_PLATFORMS": "cpu"} if kind == "cpu" else {}
        n = max(parallel, 1)
        return [dict(env) for _ in range(n)], f"{n} at once, {'CPU' if kind == 'cpu' else 'default devices'}"
    if kind.isdigit():  # '0,1,2' means GPUs
        kind, ids = "gpu", devices
    id_list = [x for x in ids.split(",") if x.strip()]
    if kind not in ("gpu", "tpu") or not id_list:
        raise ConfigError(f"--devices={devices!r}: use auto, none, cpu, gpu:0,1,... or tpu:0,1,...")
    n = parallel or len(id_list)
    slots = []
    for s in range(n):
        dev = id_list[s % len(id_list)]
        if kind == "gpu":
            env = {"CUDA_VISIBLE_DEVICES": dev}
            if n > len(id_list):  # several models per GPU: do not let the first one take 75% of its memory
                env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        else:  # one chip per process on a TPU VM (the single-chip topology variables of libtpu)
            env = {"TPU_VISIBLE_CHIPS": dev, "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1", "TPU_PROCESS_BOUNDS": "1,1,1",
                   "TPU_PROCESS_PORT": str(TPU_BASE_PORT + int(dev))}  # fmt: skip
        slots.append(env)
    return slots, f"{n} at once on {kind.upper()}s {','.join(id_list)}"


class ModelLock:
    """A launcher's claim on one model: the lock ``runs/ID/launcher.lock.json`` (dead holders are taken over)."""

    def __init__(self, sweep_dir: SweepDir, mid: str):
        self.lock = workdir_lock.WorkdirLock(sweep_dir.run_dir(mid), LAUNCH_LOCK)

    def acquire(self) -> bool:
        """True if this process now holds the lock, False if another live one does."""
        try:
            self.lock.acquire()
        except workdir_lock.WorkdirBusyError:
            return False
        return True

    def release(self) -> None:
        self.lock.release()


def is_running(sweep_dir: SweepDir, mid: str) -> bool:
    """Whether a live launcher or trainer holds this model's run directory right now."""
    return any(
        workdir_lock.WorkdirLock(sweep_dir.run_dir(mid), name).holder()
        for name in (LAUNCH_LOCK, workdir_lock.LOCK_FILE)
    )


def _record_attempt(sweep_dir: SweepDir, mid: str, attempt: dict[str, Any]) -> None:
    path = paths.join(sweep_dir.run_dir(mid), "launch.json")
    rec = read_json(path) if path.exists() else {"attempts": []}
    rec["attempts"].append(attempt)
    write_json(path, rec)


# Run before the trainer (which it execs): ask Linux to send SIGTERM when the launcher dies (PR_SET_PDEATHSIG, kept
# across exec), and stop at once if the launcher is already gone. A shim, not a preexec_fn: forking a process that
# has JAX threads and then running Python in the child can deadlock.
_PDEATHSIG_SHIM = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "
    "os.getppid() == int(sys.argv[1]) or sys.exit(143); os.execvp(sys.argv[2], sys.argv[2:])"
)


def _with_parent_death_signal(cmd: list[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _PDEATHSIG_SHIM, str(os.getpid()), *cmd]


def _progress_of(sweep_dir: SweepDir, mid: str, num_epochs: int) -> str:
    recs = read_jsonl(paths.join(sweep_dir.run_dir(mid), TRAIN_FILE))
    return f"{mid} epoch {recs[-1]['epoch']:.1f}/{num_epochs}" if recs else f"{mid} starting"


_RESULTS = {EXIT_BAD_INPUT: "bad config or data", EXIT_PREEMPTED: "preempted", EXIT_INTERRUPTED: "interrupted"}


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to a trainer's process group (it leads one: ``start_new_session``)."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signum)


@dataclasses.dataclass
class _Job:
    mid: str
    attempt: int
    slot: int
    start: float
    proc: Any = None
    lock: Any = None
    log: str = ""  # the local file the attempt's output goes to


class Launcher:
    """Runs the selected models through their attempts, printing progress and an ETA."""

    def __init__(self, sweep_dir: str, opts: LaunchOptions, log: Callable[[str], None] = print):
        self.sweep_dir = SweepDir(sweep_dir).require()
        self.opts, self.log = opts, log
        self.ids = select_models(self.sweep_dir, tuple(opts.only), opts.shard)
        self.num_epochs = int(self.sweep_dir.spec().get("num_epochs", 0))
        self.done = [m for m in self.ids if is_done(self.sweep_dir, m)]
        self.failed: list[str] = []
        self.busy_elsewhere: list[str] = []
        self.times: list[float] = []
        self.attempts: collections.Counter[str] = collections.Counter()
        self.remote = paths.is_url(self.sweep_dir.path)
        self._local = tempfile.mkdtemp(prefix="regnet_jax_sweep_") if self.remote else ""
        self._running: dict[int, _Job] = {}  # slot -> the trainer running there
        self._interrupts = 0  # Ctrl-Cs received while trainers run

    def _trainer_cmd(self, mid: str) -> list[str]:
        base = (
            shlex.split(self.opts.trainer)
            if self.opts.trainer
            else [sys.executable, "-m", "regnet_jax.train", "--nodistributed"]
        )
        cache = [] if self.opts.trainer else [f"--compilation_cache={xla_cache.parse(self.opts.compilation_cache)}"]
        return [*base, f"--config={self._config_file(mid)}", f"--workdir={self.sweep_dir.run_dir(mid)}", *cache]

    def _trainer_env(self) -> dict[str, str]:
        """A --trainer command gets the compilation cache through JAX's own variables where one was named or 'off'."""
        choice = xla_cache.parse(self.opts.compilation_cache)
        if not self.opts.trainer or choice == xla_cache.AUTO:
            return {}
        if choice == xla_cache.OFF:
            return {"JAX_ENABLE_COMPILATION_CACHE": "false"}
        return {xla_cache.DIR_ENV: choice}

    def _config_file(self, mid: str) -> str:
        """The model's config file; for a sweep on object storage a local copy (config files are imported)."""
        if not self.remote:
            return str(self.sweep_dir.config_py(mid))
        for src in (self.sweep_dir.config_json(mid), self.sweep_dir.config_py(mid)):
            paths.write_bytes(os.path.join(self._local, os.path.basename(src)), paths.read_bytes(src))
        return os.path.join(self._local, os.path.basename(self.sweep_dir.config_py(mid)))

    def _log_file(self, mid: str, header: str) -> str:
        """The local file an attempt's output goes to (starting with ``header``): runs/ID/train.log itself, or for a
        sweep on object storage a local file that ``_keep_log`` appends to it."""
        path = (
            os.path.join(self._local, f"{mid}.log")
            if self.remote
            else os.path.join(self.sweep_dir.run_dir(mid), "train.log")
        )
        paths.append_text(path, header)
        return path

    def _keep_log(self, job: _Job) -> None:
        if self.remote and job.log:
            paths.append_bytes(paths.join(self.sweep_dir.run_dir(job.mid), "train.log"), paths.read_bytes(job.log))
            os.remove(job.log)

    def _eta(self, remaining: int, slots: int) -> str:
        if not self.times:
            return "?"
        return format_eta(sum(self.times) / len(self.times) * remaining / max(slots, 1))

    def _finish(self, job: _Job, rc: int, todo: collections.deque, slots: int, running: int) -> None:
        seconds = time.time() - job.start
        ok = rc == 0 and is_done(self.sweep_dir, job.mid)
        result = "done" if ok else _RESULTS.get(rc, "failed")
        _record_attempt(self.sweep_dir, job.mid, {"start": job.start, "seconds": round(seconds, 1), "rc": rc, "result": result,
                                           "host": socket.gethostname(), "attempt": job.attempt})  # fmt: skip
        self._keep_log(job)
        log_path = paths.join(self.sweep_dir.run_dir(job.mid), "train.log")
        if ok:
            self.done.append(job.mid)
            self.times.append(seconds)
            err = read_json(paths.join(self.sweep_dir.run_dir(job.mid), SUMMARY_FILE)).get("best_top1_err")
            what = f"done in {seconds:.0f}s, best top-1 err {err:.2f}%"
        elif rc != EXIT_BAD_INPUT and job.attempt <= self.opts.max_retry:
            todo.appendleft(job.mid)
            what = f"{result} (exit {rc}, attempt {job.attempt}); retrying - see {log_path}"
        else:
            self.failed.append(job.mid)
            what = f"{result} (exit {rc}) after {job.attempt} attempt(s); giving up - see {log_path}"
        remaining = len(todo) + running
        self.log(f"[{len(self.done)}/{len(self.ids)}] {job.mid} {what} | {len(self.failed)} failed, {running} running, "
                 f"{len(todo)} queued, ETA {self._eta(remaining, slots)}")  # fmt: skip

    def run(self) -> dict[str, Any]:
        """Train every selected model that is not done; returns counts (done, failed, skipped, busy_elsewhere)."""
        slots, desc = device_slots(self.opts.devices, 1 if self.opts.in_process else self.opts.parallel)
        todo = collections.deque(m for m in self.ids if m not in self.done)
        self.log(f"launch: {len(self.ids)} models in {self.sweep_dir.root}: {len(self.done)} done already (skipped), {len(todo)} to train; "
                 f"{'in this process' if self.opts.in_process else desc}; up to {self.opts.max_retry} retries each")  # fmt: skip
        skipped = len(self.done)
        try:
            if self.opts.in_process:
                self._run_in_process(todo)
            else:
                self._run_subprocesses(todo, slots)
        finally:
            if self._local:
                shutil.rmtree(self._local, ignore_errors=True)
        summary = {
            "done": len(self.done),
            "failed": self.failed,
            "skipped": skipped,
            "busy_elsewhere": self.busy_elsewhere,
            "total": len(self.ids),
        }
        self.log(f"launch: {len(self.done)}/{len(self.ids)} done, {len(self.failed)} failed"
                 + (f", {len(self.busy_elsewhere)} being trained by another launcher" if self.busy_elsewhere else "")
                 + f". Next: python -m regnet_jax.sweep collect --out={self.sweep_dir.root}")  # fmt: skip
        return summary

    def _claim(self, mid: str, slot: int) -> _Job | None:
        """A new attempt of ``mid`` holding its lock, or None if another launcher is training it."""
        lock = ModelLock(self.sweep_dir, mid)
        if not lock.acquire():
            self.busy_elsewhere.append(mid)
            self.log(f"{mid}: another launcher is training it; skipped")
            return None
        if is_done(self.sweep_dir, mid):  # another launcher finished it since this one started
            lock.release()
            self.done.append(mid)
            return None
        self.attempts[mid] += 1
        return _Job(mid, self.attempts[mid], slot, time.time(), lock=lock)

    def _start(self, mid: str, slot: int, env: dict[str, str]) -> _Job | None:
        job = self._claim(mid, slot)
        if job is None:
            return None
        job.log = self._log_file(
            mid, f"\n=== attempt {job.attempt} on {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n"
        )
        cmd = _with_parent_death_signal(self._trainer_cmd(mid))
        with open(job.log, "a") as log:  # its own process group: a terminal's Ctrl-C reaches the launcher only
            job.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, **env, **self._trainer_env(), "PYTHONUNBUFFERED": "1"})  # fmt: skip
        return job

    def _on_sigint(self, signum, frame) -> None:
        """The first Ctrl-C: the launch loop stops the trainers (``_stop_trainers``); a second one kills them."""
        self._interrupts += 1
        if self._interrupts == 1:
            return
        jobs = list(self._running.values())
        for job in jobs:
            _signal_group(job.proc, signal.SIGKILL)
        interrupts.stop_at_once(
            f"Ctrl-C again: killed {len(jobs)} trainer(s) ({', '.join(j.mid for j in jobs) or 'none'}) without saving; rerun the same "
            f"command to resume (python -m regnet_jax.sweep launch --out={self.sweep_dir.root} ...): they resume from their last checkpoints"
        )  # fmt: skip

    def _stop_trainers(self) -> None:
        """After a Ctrl-C: pass it on to every running trainer, wait for them to save and stop, raise ``Interrupted``."""
        running = self._running
        ids = [j.mid for j in running.values()]
        if running:
            self.log(f"Ctrl-C: stopping {len(ids)} trainer(s) ({', '.join(ids)}): each saves a checkpoint at its next step "
                     "(Ctrl-C again kills them)")  # fmt: skip
        for job in running.values():
            _signal_group(job.proc, signal.SIGINT)
        stopped, other = [], []
        while running:
            for slot, job in list(running.items()):
                rc = job.proc.poll()
                if rc is None:
                    continue
                del running[slot]
                ok = rc == 0 and is_done(self.sweep_dir, job.mid)
                result = "done" if ok else _RESULTS.get(rc, "failed")
                _record_attempt(self.sweep_dir, job.mid, {"start": job.start, "seconds": round(time.time() - job.start, 1), "rc": rc,
                                                          "result": result, "host": socket.gethostname(), "attempt": job.attempt})  # fmt: skip
                job.lock.release()
                self._keep_log(job)
                if ok:
                    self.done.append(job.mid)
                elif rc in (EXIT_INTERRUPTED, EXIT_PREEMPTED):
                    stopped.append(job.mid)
                else:
                    other.append(
                        f"{job.mid} ended with exit status {rc}: see {paths.join(self.sweep_dir.run_dir(job.mid), 'train.log')}"
                    )
            time.sleep(0.1)
        what = (
            f"{len(stopped)} trainer(s) stopped ({', '.join(sorted(stopped))}), each after saving what it had trained"
            if stopped
            else "no trainer was running"
        )
        raise Interrupted(
            f"interrupted (Ctrl-C): {what}{''.join('; ' + o for o in other)}; {len(self.done)}/{len(self.ids)} models done. Rerun "
            f"the same command to resume (python -m regnet_jax.sweep launch --out={self.sweep_dir.root} ...)"
        )  # fmt: skip

    def _run_subprocesses(self, todo: collections.deque, slots: list[dict[str, str]]) -> None:
        running = self._running
        last_beat = time.time()
        previous = interrupts.set_handler(self._on_sigint)
        try:
            while (todo or running) and not self._interrupts:
                for slot, env in enumerate(slots):
                    while slot not in running and todo:
                        job = self._start(todo.popleft(), slot, env)
                        if job:
                            running[slot] = job
                for slot, job in list(running.items()):
                    rc = job.proc.poll()
                    if rc is not None:
                        del running[slot]
                        job.lock.release()
                        self._finish(job, rc, todo, len(slots), len(running))
                if running and time.time() - last_beat > self.opts.heartbeat_s:
                    last_beat = time.time()
                    self.log(
                        "running: "
                        + "; ".join(_progress_of(self.sweep_dir, j.mid, self.num_epochs) for j in running.values())
                    )
                time.sleep(self.opts.poll_s)
            if self._interrupts:
                self._stop_trainers()
        finally:  # stopped by an error: let the trainers checkpoint and stop
            for job in running.values():
                _signal_group(job.proc, signal.SIGTERM)
            for job in running.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    job.proc.wait(timeout=120)
                job.lock.release()
                self._keep_log(job)
            if previous is not None:
                interrupts.set_handler(
                    interrupts.on_interrupt_again
                    if self._interrupts and previous is interrupts.on_first_interrupt
                    else previous
                )

    def _run_in_process(self, todo: collections.deque) -> None:
        while todo:
            mid = todo.popleft()
            job = self._claim(mid, 0)
            if job is None:
                continue
            try:
                rc = self._train_here(job)
            except KeyboardInterrupt:  # Ctrl-C: the trainer saved a checkpoint (training.preemption) and says so
                _record_attempt(self.sweep_dir, mid, {"start": job.start, "seconds": round(time.time() - job.start, 1), "rc": EXIT_INTERRUPTED,
                                                      "result": "interrupted", "host": socket.gethostname(), "attempt": job.attempt})  # fmt: skip
                raise
            finally:
                job.lock.release()
            self._finish(job, rc, todo, 1, 0)

    def _train_here(self, job: _Job) -> int:
        """Train in this process with the trainer's log lines going to runs/ID/train.log; returns an exit status."""
        import ml_collections
        from absl import logging as absl_logging

        from regnet_jax.training.trainer import train_and_evaluate

        job.log = self._log_file(
            job.mid, f"\n=== attempt {job.attempt} (in process) at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n"
        )
        handler = logging.FileHandler(job.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        absl_logger, absl_handler = logging.getLogger("absl"), absl_logging.get_absl_handler()
        console_level = absl_handler.level
        absl_logger.addHandler(handler)
        absl_handler.setLevel(logging.WARNING)  # the console shows the sweep's progress, not every model's steps
        absl_logging.set_verbosity(absl_logging.INFO)
        try:
            config = smoke.shrink_loaded(
                ml_collections.ConfigDict(self.sweep_dir.config(job.mid))
            )  # as the trainer's --config flag
            train_and_evaluate(config, self.sweep_dir.run_dir(job.mid))
            return 0
        except UserError as e:
            logging.getLogger("absl").error("error: %s", e)
            return EXIT_BAD_INPUT
        except Preempted:
            raise  # SIGTERM: stop the whole launch; the checkpoint is saved and a relaunch resumes
        except Exception:  # any training failure is retried, like a crashed subprocess
            logging.getLogger("absl").error("%s", traceback.format_exc())
            return 1
        finally:
            absl_logger.removeHandler(handler)
            handler.close()
            absl_handler.setLevel(console_level)


def launch(sweep_dir: str, opts: LaunchOptions | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the sweep's models (see the module docstring); returns counts of done/failed/skipped models."""
    return Launcher(sweep_dir, opts or LaunchOptions(), log).run()


SLURM_TEMPLATE = """#!/bin/bash
# One SLURM array task per model of the sweep in {root}; written by `python -m regnet_jax.sweep launch --slurm`.
# Submit with:  sbatch {path}
# Finished models exit at once (they are skipped), so resubmitting the whole array only trains what is missing.
#SBATCH --job-name={name}
#SBATCH --array=0-{last}%{max_jobs}
#SBATCH --gres=gpu:{gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --output={root}/slurm/%A_%a.out
{partition}
cd {cwd}
exec {python} -m regnet_jax.sweep launch --out={root} --only=$SLURM_ARRAY_TASK_ID --devices=none --max_retry={retry}{cache}
"""


def _cache_flag(option: str) -> str:
    """`` --compilation_cache=...`` for the array tasks' launch line, or '' for the default (auto on each node)."""
    choice = xla_cache.parse(option)
    return "" if choice == xla_cache.AUTO else f" --compilation_cache={shlex.quote(choice)}"


def write_slurm_script(sweep_dir: str, *, partition: str = "", gpus: int = 1, cpus: int = 10, time_limit: str = "24:00:00",
                       max_jobs: int = 128, max_retry: int = 3, compilation_cache: str = xla_cache.AUTO) -> str:  # fmt: skip
    """Write DIR/slurm_array.sh (one array task per model) and return its path; submitting it is left to the user."""
    sweep = SweepDir(sweep_dir).require()
    if paths.is_url(sweep.path):
        raise SweepError(
            f"--slurm needs the sweep directory on a file system the cluster's nodes share, not {sweep.root}"
        )
    n = len(sweep.model_ids())
    root = str(sweep.path)
    path = os.path.join(root, "slurm_array.sh")
    os.makedirs(os.path.join(root, "slurm"), exist_ok=True)
    text = SLURM_TEMPLATE.format(root=root, path=path, name=sweep.spec()["spec"]["name"], last=n - 1, max_jobs=max_jobs, gpus=gpus,
                                 cpus=cpus, time=time_limit, partition=f"#SBATCH --partition={partition}" if partition else "",
                                 cwd=os.getcwd(), python=sys.executable, retry=max_retry,
                                 cache=_cache_flag(compilation_cache))  # fmt: skip
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path
