"""Runs the documented commands planned by tests/doc_commands.py, two at a time, and reports each one's result.

    python tests/doc_runner.py --plan=PLAN.json --scratch=DIR --out=RESULTS.json [--jobs=2] [--timeout_s=300]

Every command runs under ``bash`` in smoke mode (``REGNET_JAX_SMOKE=1``) in its document's scratch directory
(``DIR/<document>/``, with ``configs``, ``experiments`` and ``benchmarks`` linked from the repository), after the
stand-ins it needs are made (``ensure_*``). Commands that depend on each other (doc_commands' ``deps``) run in
order, the others in parallel.

Speed: importing TensorFlow, JAX and Flax costs each new Python process several CPU-seconds, more than a smoke run
itself. So this process imports them once and serves every ``python -m MODULE`` / ``python SCRIPT.py`` of the
commands (and of the processes they start, e.g. a sweep's trainers) from a fork of itself, the way ``python -m``
runs a module (runpy); ``python`` on the commands' PATH is a small client that forwards its arguments, working
directory, environment and standard streams to this server and exits with the module's status. Other Python
invocations (``python -c``, flags before ``-m``) run the real interpreter. JAX's persistent compilation cache
(in the scratch directory) lets identical programs (the smoke models are one canonical model per kind) compile once,
and XLA compiles without backend optimisation (``--xla_backend_optimization_level=0``).
"""

from __future__ import annotations

import argparse
import atexit
import fcntl
import json
import os
import pathlib
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
LINKED = ("configs", "experiments", "benchmarks")
PRELOAD = ("tensorflow", "tensorflow_datasets", "jax", "jax.numpy", "flax.linen", "optax", "orbax.checkpoint",
           "ml_collections", "absl.app", "absl.flags", "absl.logging", "sklearn.datasets",
           "matplotlib.pyplot", "PIL.Image", "torch")  # fmt: skip
JOB_ENV = "REGNET_JAX_DOCS_JOB"
PARSE_ONLY_ENV = "REGNET_JAX_DOCS_PARSE_ONLY"
DEFAULT_CONFIG = "configs/regnety_400mf.py"  # the model of a stand-in whose command names no config

SHIM = '''#!{python} -S
"""python for the docs harness: -m MODULE / SCRIPT.py are run by its fork server; anything else by Python."""
import json, os, signal, socket, struct, sys
REAL, SOCK = {python!r}, {sock!r}
a = sys.argv[1:]
if a[:1] == ["-m"] and len(a) > 1:
    req = {{"module": a[1], "argv": a[2:]}}
elif a and a[0].endswith(".py") and os.path.isfile(a[0]):
    req = {{"script": a[0], "argv": a[1:]}}
else:
    os.execv(REAL, [REAL, *a])
req.update(cwd=os.getcwd(), env=dict(os.environ))
data = json.dumps(req).encode()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(SOCK)
socket.send_fds(s, [struct.pack("<Q", len(data)) + data], [0, 1, 2])
f = s.makefile()
pid = int(f.readline())
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda n, _: os.kill(pid, n))
line = f.readline()
sys.exit(int(line) if line.strip() else 1)
'''


# ---------------------------------------------------------------- stand-ins


def _smoke_model(config_arg: str):
    """The (smoke-shrunk) config.model of a config file argument."""
    from regnet_jax.config import load_config_file, smoke, validate_model

    return validate_model(smoke.shrink_config(load_config_file(config_arg or DEFAULT_CONFIG)).model.to_dict())


def _random_variables(model) -> dict:
    import jax
    import numpy as np

    from regnet_jax.weights.layouts import variable_shapes

    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, variable_shapes(model))


def ensure_weights(path: str, config: str = "") -> None:
    """A weights directory (random weights of the config's smoke model), as `regnet_jax.convert` writes one."""
    from regnet_jax.weights import files as weight_files

    if not os.path.exists(path):
        model = _smoke_model(config)
        weight_files.save_weights(
            path, _random_variables(model), model, weight_files.input_spec(), source="docs harness stand-in"
        )


def ensure_state_dict(path: str, layout: str, config: str = "") -> None:
    """A downloaded PyTorch checkpoint: random weights of the config's smoke model in ``layout``'s state dict."""
    import numpy as np

    from regnet_jax.weights import layouts

    if os.path.exists(path):
        return
    sd = layouts.to_layout(_random_variables(_smoke_model(config)), layout)
    if path.endswith(".safetensors"):
        from regnet_jax.weights.formats import write_safetensors

        write_safetensors(path, sd)
    elif path.endswith(".npz"):
        np.savez(path, **sd)
    else:
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
        torch.save({"model_state": tensors} if layout == "pycls" else tensors, path)


def _write_image(path: str, seed: int, size: tuple[int, int] = (48, 40)) -> None:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(pixels).save(path)


def ensure_image(path: str) -> None:
    """A user's image (cat.jpg): random pixels in the file's format."""
    if not os.path.exists(path):
        _write_image(path, seed=len(path))


def ensure_folder(path: str) -> None:
    """A folder dataset DIR/{train,val}/<class>/<image>.jpg of 2 classes (12 and 4 images per class)."""
    if os.path.exists(path):
        return
    for split, n in (("train", 12), ("val", 4)):
        for c in ("class_a", "class_b"):
            for i in range(n):
                _write_image(os.path.join(path, split, c, f"{i:03d}.jpg"), seed=hash((split, c, i)) % 2**32)


def ensure_prepared(path: str, config: str = "") -> None:
    """A prepared directory no earlier command made: the command's own dataset (smoke-shrunk), prepared."""
    if not os.path.exists(path):
        _cli("regnet_jax.prepare", f"--config={config or 'configs/quickstart.py'}", f"--out={path}")


def _cli(*args: str) -> None:
    subprocess.run([os.environ["REGNET_JAX_DOCS_PYTHON"], "-m", *args], check=True)


def _template(kind: str) -> str:
    """A sweep of 2 models made once per harness run: set up ('sweep') or also trained ('trained_sweep')."""
    root = os.path.join(os.environ["REGNET_JAX_DOCS_SCRATCH"], "_templates")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        setup, trained = os.path.join(root, "sweep"), os.path.join(root, "trained_sweep")
        if not os.path.exists(setup):
            _cli("regnet_jax.sweep", "setup", f"--out={setup}", "--config=experiments/miniature.py:regnetx")
        if kind == "trained_sweep" and not os.path.exists(trained):
            shutil.rmtree(trained + ".tmp", ignore_errors=True)  # left by a killed harness run
            shutil.copytree(setup, trained + ".tmp")
            _cli("regnet_jax.sweep", "launch", f"--out={trained}.tmp", "--in_process")
            os.replace(trained + ".tmp", trained)
    return trained if kind == "trained_sweep" else setup


def _sweep_done(path: str) -> bool:
    from regnet_jax.design_space.launch import is_done
    from regnet_jax.design_space.layout import SweepDir

    sd = SweepDir(path)
    return all(is_done(sd, m) for m in sd.model_ids())


def ensure_sweep(path: str, trained: bool = False) -> None:
    """A sweep directory no earlier command made (a copy of the harness's own), trained where ``trained``; a sweep
    the document sets up but leaves to the reader to launch is launched."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        shutil.copytree(_template("trained_sweep" if trained else "sweep"), path)
    elif trained and not _sweep_done(path):
        _cli("regnet_jax.sweep", "launch", f"--out={path}", "--in_process")


ENSURE = {
    "weights": lambda path, p: ensure_weights(path, p.get("config", "")),
    "state_dict": lambda path, p: ensure_state_dict(path, p["layout"], p.get("config", "")),
    "image": lambda path, p: ensure_image(path),
    "folder": lambda path, p: ensure_folder(path),
    "prepared": lambda path, p: ensure_prepared(path, p.get("config", "")),
    "sweep": lambda path, p: ensure_sweep(path),
    "trained_sweep": lambda path, p: ensure_sweep(path, trained=True),
}


# ---------------------------------------------------------------- running a module in a fork


def _parse_only() -> None:
    """Make absl's app.run parse the command line (loading and validating the config) and return without running."""
    from absl import app, flags

    def run(main, argv=None, flags_parser=None):
        (flags_parser or app.parse_flags_with_usage)(argv or sys.argv)
        import ml_collections

        from regnet_jax.config import ConfigError, validate_config

        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
        if isinstance(config, ml_collections.ConfigDict) and "dataset" in config:
            try:
                validate_config(config)
            except ConfigError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
        print("parsed and validated; not run", file=sys.stderr)

    app.run = run


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def _serve(conn: socket.socket, req: dict, fds: list[int], shim: str) -> None:
    """In a fork: run the requested module or script as `python` would, on the client's streams; send its status."""
    import runpy

    for i, fd in enumerate(fds):
        os.dup2(fd, i)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.executable = shim
    conn.sendall(f"{os.getpid()}\n".encode())
    code = 0
    try:
        if req["env"].get(PARSE_ONLY_ENV):
            _parse_only()
        if "module" in req:
            sys.argv = [req["module"], *req["argv"]]
            sys.path.insert(0, req["cwd"])
            runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [req["script"], *req["argv"]]
            sys.path.insert(0, os.path.dirname(os.path.abspath(req["script"])))
            runpy.run_path(req["script"], run_name="__main__")
    except SystemExit as e:
        code = _exit_code(e)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        conn.sendall(f"{code}\n".encode())
        os._exit(code)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    (n,) = struct.unpack("<Q", msg[:8])
    data = msg[8:]
    while len(data) < n:
        data += conn.recv(n - len(data))
    return json.loads(data), fds


# ---------------------------------------------------------------- the scheduler


class Runner:
    """Forks the jobs (at most ``jobs`` at once, in dependency order) and serves their `python` processes."""

    def __init__(
        self, plans: list[dict], scratch: pathlib.Path, jobs: int, timeout_s: float, on_result=lambda results: None
    ):
        self.plans, self.scratch, self.max_jobs, self.timeout_s, self.on_result = (
            plans,
            scratch,
            jobs,
            timeout_s,
            on_result,
        )
        self.todo = [i for i, p in enumerate(plans) if p["action"] in ("run", "parse")]
        self.running: dict[int, dict] = {}  # pid -> job record
        self.results: dict[int, dict] = {}
        self.served: dict[int, int] = {}  # pid of a served python process -> job index
        self.cpu: dict[int, float] = {}  # job index -> CPU seconds of its processes reaped so far
        self.shim = str(scratch / "bin" / "python")

    def _env(self, i: int) -> dict[str, str]:
        env = dict(os.environ)
        env[JOB_ENV] = str(i)
        if self.plans[i]["action"] == "parse":
            env[PARSE_ONLY_ENV] = "1"
        return env

    def _doc_dir(self, doc: str) -> pathlib.Path:
        d = self.scratch / doc.replace("/", "_")
        if not d.exists():
            d.mkdir(parents=True)
            for name in LINKED:
                (d / name).symlink_to(REPO / name)
        return d

    def _start(self, i: int) -> None:
        plan, log = self.plans[i], self.scratch / "logs" / f"{i:03d}.log"
        cwd, env = self._doc_dir(plan["cmd"]["doc"]), self._env(i)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.chdir(cwd)
                os.environ.clear()
                os.environ.update(env)
                print(f"$ {plan['shell']}", flush=True)
                for kind, path, params in plan["ensures"]:
                    ENSURE[kind](path, params)
                os.execve("/bin/bash", ["bash", "-c", plan["shell"]], env)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(97)
        self.running[pid] = {"index": i, "start": time.perf_counter(), "log": log}

    def _ready(self) -> list[int]:
        """The jobs whose dependencies are done, the longest first (so that none is left to run alone at the end)."""
        ready = [i for i in self.todo if all(d in self.results for d in self.plans[i]["deps"])]
        return sorted(ready, key=lambda i: (-_expected_cost(self.plans[i]), i))

    def _finish(self, pid: int, status: int, usage) -> None:
        i = self.served.pop(pid, None)
        job = self.running.pop(pid, None)
        i = job["index"] if job else i
        if i is None:
            return
        self.cpu[i] = self.cpu.get(i, 0.0) + usage.ru_utime + usage.ru_stime
        if i in self.results:  # a served process reaped after its job's shell
            self.results[i]["cpu_s"] = round(self.cpu[i], 1)
        if job is None:
            return
        lines = job["log"].read_text(errors="replace").splitlines()
        self.results[i] = {
            "rc": os.waitstatus_to_exitcode(status),
            "wall_s": round(time.perf_counter() - job["start"], 1),
            "cpu_s": round(self.cpu[i], 1),
            "log_tail": "\n".join(lines[-40:]),
            "log": str(job["log"]),
            "timed_out": job.get("timed_out", False),
        }
        self.on_result(self.results)

    def _kill_job(self, pid: int, job: dict) -> None:
        job["timed_out"] = True
        for p, i in list(self.served.items()):
            if i == job["index"]:
                with_suppressed(os.kill, p, signal.SIGKILL)
        with_suppressed(os.killpg, pid, signal.SIGKILL)

    def run(self) -> dict[int, dict]:
        (self.scratch / "logs").mkdir(parents=True, exist_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock_path = str(self.scratch / "python.sock")
        server.bind(sock_path)
        server.listen(64)
        _write_shim(self.shim, sock_path)
        while self.todo or self.running:
            for i in self._ready()[: self.max_jobs - len(self.running)]:
                self.todo.remove(i)
                self._start(i)
            if not self.running and self.todo:  # a dependency failed to be scheduled: cannot happen with sorted deps
                raise RuntimeError(f"jobs {self.todo} wait for dependencies that never ran")
            readable, _, _ = select.select([server], [], [], 0.05)
            if readable:
                conn, _ = server.accept()
                req, fds = _receive(conn)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    server.close()
                    _serve(conn, req, fds, self.shim)
                self.served[pid] = int(req["env"].get(JOB_ENV, -1))
                conn.close()
                for fd in fds:
                    os.close(fd)
            while True:
                try:
                    pid, status, usage = os.wait4(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                self._finish(pid, status, usage)
            now = time.perf_counter()
            for pid, job in list(self.running.items()):
                if now - job["start"] > self.timeout_s and not job.get("timed_out"):
                    self._kill_job(pid, job)
        server.close()
        return self.results


def _expected_cost(plan: dict) -> int:
    """A rough rank of a job's run time: scripts and sweeps (several trainings), trainings, the rest."""
    shell = plan["shell"]
    if plan["action"] == "parse":
        return 0
    if not shell.startswith("python"):
        return 4
    if " sweep launch" in shell or " sweep analyze" in shell:
        return 3
    return 2 if "regnet_jax.train" in shell or "regnet_jax.benchmark" in shell else 1


def with_suppressed(fn, *args) -> None:
    try:
        fn(*args)
    except ProcessLookupError:
        pass


def _write_shim(path: str, sock: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pathlib.Path(path).write_text(SHIM.format(python=sys.executable, sock=sock))
    os.chmod(path, 0o755)
    for alias in ("python3",):
        os.symlink(path, os.path.join(os.path.dirname(path), alias))


def _environment(scratch: pathlib.Path) -> None:
    """The environment of every command: smoke mode, a compilation cache, XLA's cheapest compilation (a third of the
    compile time; smoke runs take two steps), quiet TensorFlow, scratch temp files."""
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):  # (under pytest, conftest set it)
        os.environ["XLA_FLAGS"] = " ".join(
            filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"])
        )
    os.environ.update(
        REGNET_JAX_SMOKE="1",
        JAX_COMPILATION_CACHE_DIR=str(scratch / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        TF_CPP_MIN_LOG_LEVEL="2",
        MPLBACKEND="Agg",
        TMPDIR=str(scratch / "tmp"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
        PATH=f"{scratch / 'bin'}{os.pathsep}{os.environ['PATH']}",
        PYTHONUNBUFFERED="1",
        REGNET_JAX_DOCS_PYTHON=str(scratch / "bin" / "python"),
        REGNET_JAX_DOCS_SCRATCH=str(scratch),
    )
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plan", required=True)
    p.add_argument("--scratch", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--timeout_s", type=float, default=300)
    p.add_argument("--preload", default=",".join(PRELOAD), help="modules imported once before forking ('' = none)")
    args = p.parse_args()
    scratch = pathlib.Path(args.scratch).resolve()
    plans = json.loads(pathlib.Path(args.plan).read_text())
    _environment(scratch)
    t0 = time.perf_counter()
    import importlib
    import importlib.util

    for name in filter(None, args.preload.split(",")):
        if importlib.util.find_spec(name.split(".")[0]) is not None:  # torch is optional
            importlib.import_module(name)
    preload_s = time.perf_counter() - t0

    def write(results: dict, done: bool = False) -> None:
        total = os.times()
        summary = {
            "done": done,
            "preload_s": round(preload_s, 1),
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(total.user + total.system + total.children_user + total.children_system, 1),
            "load_average": os.getloadavg(),
            "results": {str(k): v for k, v in results.items()},
        }
        pathlib.Path(args.out).write_text(json.dumps(summary, indent=1))

    write(Runner(plans, scratch, args.jobs, args.timeout_s, on_result=write).run(), done=True)


if __name__ == "__main__":
    main()
