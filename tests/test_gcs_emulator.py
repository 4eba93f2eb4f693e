"""End to end on Cloud Storage: a local emulator (gcp-storage-emulator, started and stopped here on a free loopback
port) reached by gcsfs (regnet_jax.core.paths, orbax's metadata, TFDS's) and by tensorstore (orbax's arrays).

(a) the trainer with --workdir=gs://..., killed by SIGKILL after its first evaluation and rerun, ends like an
uninterrupted local run; (b) the same with 2 processes x 4 devices and SIGTERM; (c) convert, evaluate, predict,
export and the sweep tools on gs://; data (a folder dataset, TFDS metadata) on gs://; the workdir lock on a bucket.
Not reachable here: TensorFlow's own GCS client (tf.data reading TFDS record files), see docs/training.md.
"""

import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from regnet_jax.core import paths
from regnet_jax.training import records as run_records
from regnet_jax.training import workdir_lock
from tests import background
from tests.helpers_train import REPO, TINY_MODEL, cli_env, stop, tiny_config, wait_until, write_config_file

MISSING = [m for m in ("gcp_storage_emulator", "gcsfs") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"Cloud Storage emulator tests skipped: {', '.join(MISSING)} not installed (pip install -e '.[test]')",
    ),
    pytest.mark.timeout(300),
]
BUCKET = "gs://bkt"


# The emulator, plus what real Cloud Storage does on a download and orbax's tensorstore relies on when it reads an
# object it wrote: the x-goog-generation header, and 304 for ifGenerationNotMatch.
EMULATOR = """
import sys
from http import HTTPStatus
from gcp_storage_emulator.handlers import objects

_download = objects.download

def download(request, response, storage, *args, **kwargs):
    try:
        generation = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])["generation"]
    except Exception:
        return _download(request, response, storage, *args, **kwargs)
    if request.query.get("ifGenerationNotMatch", [None])[0] == generation:
        response.status = HTTPStatus.NOT_MODIFIED
        return None
    response["x-goog-generation"] = generation
    return _download(request, response, storage, *args, **kwargs)

objects.download = download
from gcp_storage_emulator.__main__ import main
main(sys.argv[1:])
"""


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forget_gcs_clients() -> None:
    """gcsfs clients are cached per process with the endpoint they were made with."""
    import gcsfs
    from etils.epath import backend

    gcsfs.GCSFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()


class _Emulator:
    """The emulator with bucket 'bkt': one process, started by whichever needs it first (the gcs fixture or a background
    scenario of this module), stopped after this module's tests."""

    def __init__(self):
        self._lock = threading.Lock()
        self.proc = None
        self.env = None  # what points both clients at it
        self.skip = None  # why the tests cannot run

    def ensure(self, log_dir):
        """Start the emulator if it is not running; returns its environment, or None (see ``skip``)."""
        with self._lock:
            if self.env is None and self.skip is None:
                self._start(log_dir / "emulator.log")
            return self.env

    def _start(self, log_path):
        port = _free_loopback_port()
        cmd = [
            sys.executable,
            "-c",
            EMULATOR,
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--in-memory",
            "--default-bucket=bkt",
            "-q",
        ]
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=background.environ()
            )
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.skip = f"Cloud Storage emulator tests skipped: the emulator did not start: {log_path.read_text()[-500:]}"
                    self.stop()
                    return
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        self.env = {
            "EPATH_USE_TF": "false",
            "STORAGE_EMULATOR_HOST": url,
            "TENSORSTORE_GCS_HTTP_URL": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        }

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
        self.env, self.skip = None, self.skip or "the emulator was stopped"

    def read(self, path):
        """Object ``path``'s (gs://bkt/...) content, or None if there is none, asked over HTTP: the background
        scenarios cannot use this process's clients, which point at the emulator only while this module's tests run."""
        name = urllib.parse.quote(path.removeprefix(f"{BUCKET}/"))
        try:
            with urllib.request.urlopen(f"{self.env['STORAGE_EMULATOR_HOST']}/bkt/{name}", timeout=30) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def exists(self, path):
        return self.read(path) is not None


_EMULATOR = _Emulator()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator; this process's environment (and the returned one) point both clients at it."""
    try:
        env = _EMULATOR.ensure(tmp_path_factory.mktemp("gcs"))
        if env is None:
            pytest.skip(_EMULATOR.skip)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            _forget_gcs_clients()
            yield env
        _forget_gcs_clients()
    finally:
        _EMULATOR.stop()


def _env(gcs, num_devices):
    return {**cli_env(num_devices), **gcs}


def _start(gcs, module, args, num_devices, log_path):
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=_env(gcs, num_devices), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _wait_for(path, procs, logs, timeout=180):
    """Poll until ``path`` exists on the bucket while the processes run."""
    wait_until(lambda: _EMULATOR.exists(path), procs, f"{path} appeared", timeout, logs)


def _config(**overrides):
    return tiny_config(num_epochs=3, **overrides)  # 3 epochs of 4 steps; a checkpoint and an evaluation per epoch


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The uninterrupted local run the bucket runs must reproduce: (workdir, summary)."""
    from regnet_jax.train import train_and_evaluate

    workdir = tmp_path_factory.mktemp("local") / "run"
    return workdir, train_and_evaluate(_config(), str(workdir))


def _steps(records):
    return [r["step"] for r in records]


def _tensorboard_scalars(gcs_dir, tmp_path, tag):
    """(step, value) of a TensorBoard tag, read by TensorBoard's own reader from a local copy of the event files."""
    from tensorboard.backend.event_processing import event_accumulator

    local = tmp_path / "tb"
    local.mkdir()
    for name in paths.listdir(gcs_dir):
        if "tfevents" in name:
            (local / name).write_bytes(paths.read_bytes(paths.join(gcs_dir, name)))
    acc = event_accumulator.EventAccumulator(str(local))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@background.scenario
def bucket_run(tmp):
    """(a): the run on gs://bkt/qs killed by SIGKILL after its first evaluation, then rerun to the end."""
    if MISSING or (gcs := _EMULATOR.ensure(tmp)) is None:
        return None  # the tests skip
    workdir = f"{BUCKET}/qs"
    args = [f"--config={write_config_file(tmp / 'config.py', _config())}", f"--workdir={workdir}"]
    logs = [tmp / "first.log", tmp / "second.log"]
    proc = _start(gcs, "regnet_jax.train", args, 8, logs[0])
    try:
        _wait_for(f"{workdir}/{run_records.EVAL_FILE}", [proc], logs[:1])  # written out with the epoch-1 checkpoint...
        _wait_for(f"{workdir}/checkpoints/4/commit_success.txt", [proc], logs[:1])  # ...which orbax commits after
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    lock = _EMULATOR.read(f"{workdir}/{workdir_lock.LOCK_FILE}")
    killed = {
        "pid": proc.pid,
        "summary": _EMULATOR.exists(f"{workdir}/summary.json"),
        "lock": None if lock is None else json.loads(lock),
    }
    proc = _start(gcs, "regnet_jax.train", args, 8, logs[1])
    try:
        rc = proc.wait(timeout=240)
    finally:
        stop(proc)
    return {"workdir": workdir, "killed": killed, "rc": rc, "log": logs[1].read_text()}


def test_quickstart_on_a_bucket_killed_after_its_first_evaluation_resumes_like_a_local_run(
    gcs, bucket_run, local_run, tmp_path
):
    bucket_run = bucket_run.outcome()
    workdir, killed = bucket_run["workdir"], bucket_run["killed"]
    assert not killed["summary"], "the run finished before it was killed"
    assert killed["lock"]["pid"] == killed["pid"]  # the killed run left its lock behind...
    assert bucket_run["rc"] == 0, bucket_run["log"][-3000:]
    log = bucket_run["log"]
    assert (
        "taking over the lock of a run that is no longer alive" in log and f"pid {killed['pid']}" in log
    )  # ...taken over
    assert f"resumed from {workdir}/checkpoints at step" in log
    summary = paths.read_json(f"{workdir}/summary.json")
    assert summary["steps"] == 12
    for k, v in local_run[1]["final"].items():
        assert summary["final"][k] == pytest.approx(v, rel=1e-5), k
    # Preemption-safe records: one line per evaluation and per log step, no torn or repeated lines.
    assert _steps(run_records.read_jsonl(f"{workdir}/{run_records.EVAL_FILE}")) == [4, 8, 12]
    train_steps = _steps(run_records.read_jsonl(f"{workdir}/{run_records.TRAIN_FILE}"))
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 12
    assert [s for s, _ in _tensorboard_scalars(workdir, tmp_path, "eval/top1_err")] == [4, 8, 12]
    assert paths.read_json(f"{workdir}/config.json")["batch_size"] == 32
    assert paths.read_bytes(f"{workdir}/curves.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert not paths.exists(f"{workdir}/{workdir_lock.LOCK_FILE}")  # released at the end
    assert not (REPO / "gs:").exists()  # nothing went to a local folder named after the URL


@background.scenario
def bucket_two_processes_preempted(tmp):
    """(b): 2 processes x 4 devices on gs://bkt/two, SIGTERM to process 1 only after the first evaluation (one host's
    preemption notice), then rerun: each attempt's exit statuses and logs, and what the first left on the bucket."""
    if MISSING or (gcs := _EMULATOR.ensure(tmp)) is None:
        return None  # the tests skip
    workdir = f"{BUCKET}/two"
    cfg = write_config_file(tmp / "config.py", _config())
    port = _free_loopback_port()

    def run(attempt, until=None):
        logs = [tmp / f"{attempt}-process{i}.log" for i in range(2)]
        procs = [
            _start(
                gcs,
                "regnet_jax.train",
                [
                    f"--config={cfg}",
                    f"--workdir={workdir}",
                    "--distributed",
                    f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                ],
                4,
                logs[i],
            )  # fmt: skip
            for i in range(2)
        ]
        try:
            if until:
                _wait_for(until, procs, logs)
                os.killpg(procs[1].pid, signal.SIGTERM)
            codes = [p.wait(timeout=240) for p in procs]
        finally:
            for p in procs:
                stop(p)
        return codes, [log.read_text() for log in logs]

    first = run("first", until=f"{workdir}/{run_records.EVAL_FILE}")
    left = {name: _EMULATOR.exists(f"{workdir}/{name}") for name in ("summary.json", workdir_lock.LOCK_FILE)}
    return workdir, first, left, run("second")


def test_two_processes_on_a_bucket_preempted_by_sigterm_resume(gcs, bucket_two_processes_preempted, local_run):
    """jax.distributed on localhost, 2 processes x 4 devices; process 0 writes the records, both save and restore.
    The notice reached process 1 only: both stop at the same step (JAX's preemption service), none waits forever."""
    workdir, (codes, logs), left, second = bucket_two_processes_preempted.outcome()
    assert codes == [3, 3], logs[0][-2000:] + logs[1][-2000:]  # preempted, a checkpoint saved
    stopped = [re.findall(r"preempted at step (\d+); checkpoint saved", log) for log in logs]
    assert len(stopped[0]) == 1 and stopped[0] == stopped[1], stopped
    assert not left["summary.json"]
    assert not left[workdir_lock.LOCK_FILE]  # a preempted run releases its lock
    codes, logs = second
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert all(f"resumed from {workdir}/checkpoints at step" in log for log in logs)  # every process restored it
    summary = paths.read_json(f"{workdir}/summary.json")
    assert summary["steps"] == 12 and summary["final"]["loss"] == pytest.approx(local_run[1]["final"]["loss"], rel=1e-4)
    assert _steps(run_records.read_jsonl(f"{workdir}/{run_records.EVAL_FILE}")) == [4, 8, 12]


def test_convert_evaluate_predict_export_on_a_bucket(gcs, bucket_run, local_run, tmp_path):
    bucket_run = bucket_run.outcome()
    from PIL import Image

    from regnet_jax.training import prediction
    from regnet_jax.training.evaluation import evaluate
    from regnet_jax.weights import exporting, layouts
    from regnet_jax.weights.pretrained import load_pretrained

    config = tiny_config()
    from_bucket = evaluate(config, bucket_run["workdir"])  # evaluate --checkpoint=gs://... (a training workdir)
    assert from_bucket["top1_err"] == pytest.approx(local_run[1]["final"]["top1_err"], abs=1e-9)
    trained = load_pretrained(local_run[0])
    np.savez(tmp_path / "pycls.npz", **layouts.to_layout(trained.variables, "pycls"))
    out = layouts.convert_file(
        "pycls", str(tmp_path / "pycls.npz"), config, f"{BUCKET}/weights"
    )  # convert --output=gs://...
    assert str(out["output"]) == f"{BUCKET}/weights" and paths.isfile(f"{BUCKET}/weights/meta.json")
    converted = evaluate(config, f"{BUCKET}/weights")  # a weights directory on the bucket
    assert converted["count"] == 50 and 0 <= converted["top1_err"] <= 100
    image = io.BytesIO()
    Image.fromarray(np.full((20, 24, 3), 128, np.uint8)).save(image, format="PNG")
    paths.write_bytes(f"{BUCKET}/images/grey.png", image.getvalue())
    (result,) = prediction.predict(f"{BUCKET}/weights", [f"{BUCKET}/images/grey.png"], k=3, resolution=16)
    assert result["image"] == f"{BUCKET}/images/grey.png" and len(result["top"]) == 3
    _, sidecar = exporting.export_variables(
        trained.variables, TINY_MODEL, trained.input, f"{BUCKET}/export/tiny.safetensors"
    )
    tensors, meta = exporting.read_export(f"{BUCKET}/export/tiny.safetensors")
    assert str(sidecar) == f"{BUCKET}/export/tiny.safetensors.json" and meta["model"]["widths"] == [16]
    np.testing.assert_array_equal(
        tensors["params"]["head"]["fc"]["kernel"], trained.variables["params"]["head"]["fc"]["kernel"]
    )


def test_sweep_setup_launch_collect_analyze_on_a_bucket(gcs):
    from regnet_jax.config import load_config_file
    from regnet_jax.design_space.collect import collect
    from regnet_jax.design_space.launch import Launcher, LaunchOptions, launch
    from regnet_jax.design_space.layout import SweepDir
    from regnet_jax.design_space.report import analyze
    from regnet_jax.design_space.sweep_setup import setup_sweep
    from tests.test_sweep import TINY

    out = f"{BUCKET}/sweep"
    setup_sweep({**TINY, "n": 2}, out, log=lambda s: None)
    sd = SweepDir(out)
    assert sd.model_ids() == ["000000", "000001"]
    # A trainer subprocess imports its config file: the launcher gives it a local copy of the one on the bucket.
    local = Launcher(out, LaunchOptions())._config_file("000001")
    assert not paths.is_url(local) and json.loads(load_config_file(local).to_json_best_effort()) == sd.config("000001")
    assert launch(out, LaunchOptions(in_process=True), log=lambda s: None)["done"] == 2
    assert "=== attempt 1 (in process)" in paths.read_text(paths.join(sd.run_dir("000000"), "train.log"))
    assert paths.read_json(paths.join(sd.run_dir("000001"), "launch.json"))["attempts"][0]["result"] == "done"
    rows = collect(out, log=None)
    assert [r["status"] for r in rows] == ["done", "done"] and all(r["error"] is not None for r in rows)
    assert paths.read_text(sd.results_csv).startswith("id,sweep,status")
    result = analyze([out], f"{out}/analysis", repeats=50, log=lambda s: None)
    assert result["sweeps"]["sweep"]["dir"] == out
    assert paths.read_text(f"{out}/analysis/analysis.html").startswith("<!doctype html>")
    assert paths.read_json(f"{out}/analysis/analysis.json")["ranking_by_mean_error"] == ["sweep"]


def _png(rng, h, w) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_folder_dataset_and_tfds_metadata_on_a_bucket(gcs, tmp_path):
    import tensorflow_datasets as tfds

    from regnet_jax import data
    from regnet_jax.data.sources import DatasetNotReadyError

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                blob = _png(rng, *rng.integers(16, 40, 2))
                paths.write_bytes(f"{BUCKET}/folder/{split}/{c}/{i}.png", blob)
                (tmp_path / "folder" / split / c).mkdir(parents=True, exist_ok=True)
                (tmp_path / "folder" / split / c / f"{i}.png").write_bytes(blob)

    def batches(root):
        config = tiny_config(batch_size=4, eval_batch_size=4, **{"dataset.name": "folder", "dataset.data_dir": root, "dataset.eval_split": "validation",
                                                                "dataset.num_train_examples": 0, "dataset.num_eval_examples": 0})  # fmt: skip
        data.check_dataset(config)
        return list(data.TrainInput(config).epoch(0)) + list(data.EvalInput(config).batches())

    on_bucket, local = batches(f"{BUCKET}/folder"), batches(str(tmp_path / "folder"))
    assert len(on_bucket) == len(local) == 3
    for a, b in zip(on_bucket, local):  # the same images, labels and order, read through the path layer
        for k in b:
            np.testing.assert_array_equal(a[k], b[k])
    # TFDS on a bucket: its metadata is read through etils.epath (gcsfs); the record files through TensorFlow's client.
    builder = tfds.builder("mnist", data_dir=f"{BUCKET}/tfds")
    splits = [tfds.core.SplitInfo(name=s, shard_lengths=[8], num_bytes=0) for s in ("train", "test")]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    builder.info.write_to_directory(builder.data_dir)
    config = tiny_config(
        **{
            "dataset.name": "mnist",
            "dataset.data_dir": f"{BUCKET}/tfds",
            "dataset.num_train_examples": 0,
            "dataset.num_eval_examples": 0,
        }
    )
    data.check_dataset(config)  # prepared: both splits found with their sizes
    config.dataset.data_dir = f"{BUCKET}/empty"
    with pytest.raises(DatasetNotReadyError, match=f"not prepared: looked in {BUCKET}/empty/mnist"):
        data.check_dataset(config)


def test_workdir_lock_on_a_bucket(gcs, caplog):
    from regnet_jax.train import train_and_evaluate

    workdir = f"{BUCKET}/locked"
    holder = workdir_lock.WorkdirLock(workdir, settle_s=0.1)
    holder.acquire()
    try:
        with pytest.raises(
            workdir_lock.WorkdirBusyError,
            match=rf"in use by another run \(host {socket.gethostname()}, pid {os.getpid()}, started ",
        ):
            train_and_evaluate(tiny_config(), workdir)
    finally:
        holder.release()
    assert not paths.exists(f"{workdir}/{workdir_lock.LOCK_FILE}")
    with pytest.raises(paths.StorageError, match="cannot write gs://nobucket/run/lock.json: its bucket does not exist"):
        train_and_evaluate(tiny_config(), "gs://nobucket/run")
    # A holder on another host cannot be checked by pid: its heartbeat decides.
    record = {
        "host": "other-host",
        "pid": 1,
        "started": "yesterday",
        "heartbeat": time.time(),
        "lease_s": 60,
        "token": "x",
    }
    paths.write_json(f"{workdir}/{workdir_lock.LOCK_FILE}", record)
    with pytest.raises(workdir_lock.WorkdirBusyError, match="host other-host, pid 1, started yesterday"):
        workdir_lock.WorkdirLock(workdir, settle_s=0.1).acquire()
    paths.write_json(f"{workdir}/{workdir_lock.LOCK_FILE}", {**record, "heartbeat": time.time() - 61})
    taker = workdir_lock.WorkdirLock(workdir, settle_s=0.1)
    taker.acquire()
    taker.release()
    assert any("taking over the lock" in r.getMessage() and "heartbeat was 6" in r.getMessage() for r in caplog.records)


def test_prepared_data_on_a_bucket(gcs, tmp_path, monkeypatch):
    """python -m regnet_jax.prepare --out=gs://...: shards uploaded whole, index last; read through a local cache."""
    from regnet_jax import data
    from regnet_jax.data import build_prepared

    monkeypatch.setenv("REGNET_JAX_PREPARED_CACHE", str(tmp_path / "cache"))
    out = f"{BUCKET}/prepared"
    index = build_prepared.build(tiny_config(), out, 37, ["train", "test"], images_per_shard=64)
    assert paths.read_json(f"{out}/index.json") == json.loads(json.dumps(index))
    assert [s["file"] for s in index["splits"]["train"]["shards"]] == [
        "train-00000-of-00002.array_record",
        "train-00001-of-00002.array_record",
    ]
    prepared = tiny_config(**{"dataset.prepared_dir": out})
    for a, b in zip(data.TrainInput(tiny_config()).epoch(0), data.TrainInput(prepared).epoch(0)):
        np.testing.assert_array_equal(a["image"], b["image"])  # digits are stored as they are: the same batches
    cached = sorted(os.listdir(next((tmp_path / "cache").iterdir())))
    assert cached == ["train-00000-of-00002.array_record", "train-00001-of-00002.array_record"]
