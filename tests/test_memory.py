"""Memory (docs/performance.md, "Memory: where it goes"): the train step donates its state, the compiler's freed
memory goes back to the system after a benchmark compiles, the benchmark path imports no TensorFlow, and the
side-by-side's PyTorch worker builds its model without importing regnet_jax (so jax's memory is not counted as
PyTorch's)."""

import ctypes
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from regnet_jax.benchmarking import timing
from regnet_jax.core import distributed
from regnet_jax.core.memory import release_free_heap
from regnet_jax.models import create_model, model_spec
from regnet_jax.training import optimizer
from regnet_jax.training import steps as train_steps
from tests.helpers_train import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE = (16, 16, 3)
NO_DATA_LIBRARIES = ("tensorflow", "tensorflow_datasets", "clu")


def _anon_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


def test_train_step_donates_the_state():
    config = tiny_config()
    model = create_model(config, bn_axis_name=distributed.AXIS)
    shapes = jax.eval_shape(lambda: train_steps.init_variables(model, jax.random.key(0), IMAGE))
    tx = optimizer.make_optimizer(config, steps_per_epoch=2, params=shapes["params"])
    mesh = distributed.make_mesh(jax.devices()[:2])
    state = train_steps.create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    step = train_steps.make_train_step(model, tx, mesh, num_classes=10)
    rng = np.random.default_rng(0)
    batch = distributed.shard_batch(
        {"image": rng.normal(size=(8, *IMAGE)).astype(np.float32), "label": np.arange(8, dtype=np.int32)}, mesh
    )
    # XLA writes the new state into the old state's buffers: every byte of the state is aliased.
    state_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree_util.tree_leaves(state))
    assert step.lower(state, batch).compile().memory_analysis().alias_size_in_bytes == state_bytes
    new_state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(state))
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(new_state))
    assert int(new_state.step) == 1


@pytest.mark.skipif(not (os.path.exists("/proc/self/status") and release_free_heap()), reason="needs Linux and glibc")
def test_release_free_heap_returns_freed_heap_memory_to_the_system():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n, size = 2000, 64 << 10  # 125 MiB in blocks below glibc's mmap threshold: they come from the heap
    blocks = [libc.malloc(size) for _ in range(n)]
    for b in blocks:
        ctypes.memset(b, 1, size)  # resident
    for b in blocks[:-1]:  # the last one stays, so that free() cannot shrink the heap's top by itself
        libc.free(b)
    before = _anon_kb()
    assert release_free_heap()
    released_mb = (before - _anon_kb()) / 1024
    libc.free(blocks[-1])
    assert released_mb > 100


def test_prepare_releases_the_compilers_free_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(timing, "release_free_heap", lambda: calls.append("release"))
    stages = []
    prep = timing.prepare(
        tiny_config(), mode="train", batch=4, num_devices=1, on_stage=lambda s: stages.append((s, list(calls)))
    )
    assert stages == [("built", []), ("compiled", ["release"])]  # after compiling, before any step
    jax.block_until_ready(prep.run())
    assert calls == ["release"] * 2  # and after the first (warm-up) step
    jax.block_until_ready(prep.run())
    assert calls == ["release"] * 2  # never again: not inside the timed steps


@pytest.mark.timeout(240)
def test_benchmark_command_imports_no_tensorflow():
    """The benchmark reads no data: TensorFlow (~0.5 GB resident), TFDS and clu must stay out of its process."""
    code = (
        "import atexit, runpy, sys\n"
        f"atexit.register(lambda: print('IMPORTED', [m for m in {NO_DATA_LIBRARIES!r} if m in sys.modules]))\n"
        "sys.argv = ['regnet_jax.benchmark', '--config=configs/regnety_400mf.py', '--mode=train', '--devices=1']\n"
        "runpy.run_module('regnet_jax.benchmark', run_name='__main__', alter_sys=True)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "REGNET_JAX_SMOKE": "1"}
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert p.returncode == 0, p.stderr
    assert "images/s" in p.stdout and "IMPORTED []" in p.stdout, p.stdout


def test_commands_that_read_no_data_import_no_tensorflow():
    """Importing TensorFlow adds ~0.6 GB to the resident set: only the commands that read data may import it."""
    commands = ["benchmark", "export", "convert", "complexity", "models.__main__"]
    code = "import sys\n" + "".join(f"import regnet_jax.{c}\n" for c in commands)
    code += f"print('IMPORTED', [m for m in {NO_DATA_LIBRARIES!r} if m in sys.modules])\n"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "IMPORTED []" in p.stdout, p.stdout


@pytest.mark.timeout(240)
def test_side_by_side_pytorch_worker_imports_no_regnet_jax():
    pytest.importorskip("torch")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from side_by_side import plain_spec

    spec = model_spec(tiny_config().model)
    opts = dict(batch=2, resolution=16, dtype="float32", device="cpu", threads=1, spec=plain_spec(spec))
    code = (
        "import json, sys\n"
        "sys.path.insert(0, 'benchmarks')\n"
        "import side_by_side\n"
        "run, info, _ = side_by_side._build('torch_channels_last', 'tiny', 'train', json.loads(sys.argv[1]))\n"
        "run()\n"
        "print('IMPORTED', [m for m in ('regnet_jax.models', 'jax', 'flax') if m in sys.modules])\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, json.dumps(opts)], cwd=REPO, capture_output=True, text=True, timeout=200
    )
    assert p.returncode == 0, p.stderr
    assert "IMPORTED []" in p.stdout, p.stdout


def test_side_by_side_plain_spec_builds_the_same_pytorch_model():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from side_by_side import plain_spec, spec_namespace
    from torch_regnet import build_torch_model

    spec = model_spec(tiny_config().model)
    torch.manual_seed(0)
    a = build_torch_model(spec).state_dict()
    torch.manual_seed(0)
    b = build_torch_model(spec_namespace(json.loads(json.dumps(plain_spec(spec))))).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
