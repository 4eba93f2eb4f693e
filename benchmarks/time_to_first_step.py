"""Time to the first training step with and without JAX's persistent compilation cache (``--compilation_cache``).

    python benchmarks/time_to_first_step.py [--config=configs/regnety_400mf.py] [--batch=32] [--resolution=224] [--repeats=2]

Three commands of ``python -m regnet_jax.train`` on synthetic data, each timed from the process's start to its first
logged step (``--config.log_every_steps=1``), in two sequences:

1. a fresh run (a new workdir), stopped by SIGTERM after its first step (a preemption: it saves a checkpoint);
2. the same command again: the resumed run;
3. the same model in a second workdir: a sweep's second model of the same shape (or a retry).

``cold`` runs the sequence with ``--compilation_cache=off``; ``cached`` with an empty cache directory that run 1 fills
and runs 2 and 3 load from. The table gives the median over ``--repeats`` of each time, the speed-up cold/cached, and
the time JAX logged for the train step's XLA compilation (``JAX_LOG_COMPILES``; when cached, that is the time to load
it from the cache). Sequences alternate (cold, cached, cold, ...) so that a changing
machine load affects both alike.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LINE = re.compile(r"\] step (\d+)/(\d+) ")
COMPILE_LINE = re.compile(r"Finished XLA compilation of (\S+) in ([0-9.]+) sec")
COMMANDS = ("fresh run", "resumed run", "second model, same shape")


def run_to_first_step(args: argparse.Namespace, workdir: str, cache: str, stop: str) -> dict:
    """Start one training command; return the seconds to its first step line and the compile times JAX logged.
    ``stop`` is 'term' (SIGTERM: checkpoint and exit) or 'kill' after that line."""
    cmd = [
        sys.executable, "-m", "regnet_jax.train", f"--config={args.config}", f"--workdir={workdir}",
        f"--compilation_cache={cache}", "--config.dataset.name=synthetic", f"--config.batch_size={args.batch}",
        f"--config.resolution={args.resolution}", f"--config.dataset.num_train_examples={args.batch * args.steps}",
        f"--config.dataset.num_eval_examples={args.batch}", f"--config.eval_batch_size={args.batch}",
        "--config.num_epochs=1", "--config.log_every_steps=1", "--config.bn_group_size=0",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "JAX_LOG_COMPILES": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
    }
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # --compilation_cache decides
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    out: dict = {"compile_s": {}, "lines": []}
    killer = threading.Timer(args.timeout_s, proc.kill)
    killer.start()
    try:
        for line in proc.stdout:
            out["lines"].append(line)
            if m := COMPILE_LINE.search(line):
                out["compile_s"][m.group(1)] = out["compile_s"].get(m.group(1), 0.0) + float(m.group(2))
            if "first_step_s" not in out and STEP_LINE.search(line):
                out["first_step_s"] = time.perf_counter() - start
                if stop == "term":
                    proc.send_signal(signal.SIGTERM)
                else:
                    os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        killer.cancel()
    if "first_step_s" not in out:
        sys.exit(f"error: no step line from {' '.join(cmd)}:\n{''.join(out['lines'][-30:])}")
    if stop == "term" and proc.returncode != 3:
        sys.exit(
            f"error: the SIGTERM'd run exited {proc.returncode}, not 3 (preempted, checkpoint saved):\n{''.join(out['lines'][-30:])}"
        )
    return out


def sequence(args: argparse.Namespace, root: str, cached: bool) -> list[dict]:
    """The three commands; with ``cached`` against an empty cache directory under ``root``."""
    cache = os.path.join(root, "xla_cache") if cached else "off"
    first, second = os.path.join(root, "run"), os.path.join(root, "run_b")
    results = [run_to_first_step(args, first, cache, "term"), run_to_first_step(args, first, cache, "kill"),
               run_to_first_step(args, second, cache, "kill")]  # fmt: skip
    if cached:
        results[0]["entries"] = len([f for f in os.listdir(cache) if f.endswith("-cache")])
    return results


def step_compile(r: dict) -> float | None:
    times = [v for k, v in r["compile_s"].items() if "step" in k and "per_device" not in k]
    return max(times) if times else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/regnety_400mf.py")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--steps", type=int, default=4, help="training steps per epoch (the runs stop after the first)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--timeout_s", type=float, default=900)
    p.add_argument("--verbose", action="store_true", help="print every compile JAX logged")
    args = p.parse_args()

    load = os.getloadavg()
    rows: dict[str, dict[str, list]] = {
        c: {"cold": [], "cached": [], "cold_compile": [], "cached_compile": []} for c in COMMANDS
    }
    for repeat in range(args.repeats):
        for cached in (False, True):
            root = tempfile.mkdtemp(prefix="ttfs_")
            try:
                kind = "cached" if cached else "cold"
                for name, r in zip(COMMANDS, sequence(args, root, cached)):
                    rows[name][kind].append(r["first_step_s"])
                    rows[name][f"{kind}_compile"].append(step_compile(r))
                    extra = f", {r['entries']} cache entries written" if "entries" in r else ""
                    print(f"[{repeat + 1}/{args.repeats}] {kind:<6} {name:<25} first step after {r['first_step_s']:6.1f} s; "
                          f"train step compiled (or loaded) in {step_compile(r) or 0:.1f} s{extra}", flush=True)  # fmt: skip
                    if args.verbose:
                        for k, v in sorted(r["compile_s"].items(), key=lambda kv: -kv[1]):
                            print(f"    {v:7.2f} s  {k}")
            finally:
                shutil.rmtree(root, ignore_errors=True)

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    print(f"\ntime to first step, {args.config} batch {args.batch} @ {args.resolution}px, synthetic data; median of {args.repeats}; "
          f"load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'command':<27} {'cold s':>8} {'cached s':>9} {'speed-up':>9} {'step compile/load s':>27}")
    for name in COMMANDS:
        r = rows[name]
        cold, warm = med(r["cold"]), med(r["cached"])
        cc, wc = med(r["cold_compile"]), med(r["cached_compile"])
        compile_text = f"{cc:.1f} / {wc:.1f}" if cc is not None and wc is not None else "-"
        print(f"{name:<27} {cold:>8.1f} {warm:>9.1f} {cold / warm:>8.2f}x {compile_text:>27}")


if __name__ == "__main__":
    main()
