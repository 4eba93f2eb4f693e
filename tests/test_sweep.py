"""The sweep lifecycle: setup writes trainable configs; launch skips, retries and parallelises (with a stand-in
trainer); collect builds one row per model; and the real setup -> launch -> kill -> resume -> collect -> analyze."""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import ml_collections
import pytest

from regnet_jax.config import ConfigError, base_lr, validate_config, validate_model
from regnet_jax.design_space import get_space
from regnet_jax.design_space.collect import collect
from regnet_jax.design_space.launch import LaunchOptions, device_slots, launch, write_slurm_script
from regnet_jax.design_space.layout import SweepDir, SweepError
from regnet_jax.design_space.sweep_setup import load_config_file, setup_sweep
from regnet_jax.models.complexity import count
from tests import background
from tests.helpers_train import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny 16-px models on synthetic data, 1 training step each.
TINY = dict(
    space="anynetx_c", n=4, seed=0, dataset="synthetic", resolution=16, batch_size=8, num_epochs=1,
    dists={"depth": "log_uniform:1:1:1", "width": "log_uniform:8:16:8", "group_w": "power2_uniform:8:8:8", "bot_mul": "choice:1.0"},
    model={"stem_w": 8, "num_classes": 10},
    train={"dataset.num_train_examples": 8, "dataset.num_eval_examples": 8, "eval_batch_size": 8, "log_every_steps": 1},
)  # fmt: skip
TINY_FLAGS = [
    "--space=anynetx_c", "--dataset=synthetic", "--resolution=16", "--batch_size=8", "--epochs=1",
    "--dist=depth=log_uniform:1:1:1", "--dist=width=log_uniform:8:16:8", "--dist=group_w=power2_uniform:8:8:8",
    "--dist=bot_mul=choice:1.0", "--model=stem_w=8", "--model=num_classes=10", "--set=dataset.num_train_examples=8",
    "--set=dataset.num_eval_examples=8", "--set=eval_batch_size=8", "--set=log_every_steps=1",
]  # fmt: skip

# A stand-in trainer: per model id, FAKE_PLAN gives the exit status of each attempt (default 0 = success, writing
# the files the real trainer writes); FAKE_SLEEP seconds of work; it records when it ran and on which GPU.
FAKE_TRAINER = textwrap.dedent("""
    import json, os, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
    mid = os.path.basename(args["config"])[:-3]
    cfg = json.load(open(args["config"][:-3] + ".json"))
    work = args["workdir"]
    os.makedirs(work, exist_ok=True)
    tries = os.path.join(work, "tries")
    n = sum(1 for _ in open(tries)) if os.path.exists(tries) else 0
    open(tries, "a").write("x\\n")
    plan = json.loads(os.environ.get("FAKE_PLAN", "{}")).get(mid, [0])
    rc = plan[min(n, len(plan) - 1)]
    open(os.path.join(work, "pid"), "w").write(str(os.getpid()))
    t0 = time.time()
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    with open(os.path.join(work, "ran.jsonl"), "a") as f:
        f.write(json.dumps({"start": t0, "end": time.time(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
    if rc:
        sys.exit(rc)
    err = 50.0 + int(mid)
    with open(os.path.join(work, "eval_metrics.jsonl"), "a") as f:
        for e in range(1, cfg["num_epochs"] + 1):
            f.write(json.dumps({"step": e, "epoch": e, "top1_err": err + cfg["num_epochs"] - e, "top5_err": 10.0, "loss": 1.0}) + "\\n")
    json.dump({"status": "done", "epochs": cfg["num_epochs"], "steps": cfg["num_epochs"], "final": {"top1_err": err, "top5_err": 10.0, "loss": 1.0},
               "best_top1_err": err, "wall_time_s": 0.1, "params": 1, "flops": 1}, open(os.path.join(work, "summary.json"), "w"))
""")


@pytest.fixture
def fake_trainer(tmp_path):
    path = tmp_path / "fake_trainer.py"
    path.write_text(FAKE_TRAINER)
    return f"{sys.executable} {path}"


def _attempts(out, mid):
    with open(os.path.join(out, "runs", mid, "launch.json")) as f:
        return [a["result"] for a in json.load(f)["attempts"]]


def test_setup_writes_trainable_configs_and_summary(tmp_path):
    out = str(tmp_path / "sweep")
    info = setup_sweep({**TINY, "flops": [30_000, 60_000]}, out, log=lambda s: None)
    sd = SweepDir(out)
    ids = sd.model_ids()
    assert ids == ["000000", "000001", "000002", "000003"] and info["resolution"] == 16
    summary = sd.summary()
    assert summary["num_models"] == 4 and summary["draws"] >= 4
    for mid, entry in zip(ids, summary["models"]):
        cfg = sd.config(mid)
        from_py = load_config_file(sd.config_py(mid))  # what `python -m regnet_jax.train --config=...py` loads
        assert json.loads(from_py.to_json_best_effort()) == cfg
        validate_config(ml_collections.ConfigDict(cfg))
        assert validate_model(cfg["model"]) == cfg["model"] == entry["model"]
        assert cfg["model"]["type"] == "anynet" and cfg["model"]["stem_w"] == 8 and cfg["model"]["num_classes"] == 10
        assert (cfg["dataset"]["name"], cfg["resolution"], cfg["num_epochs"], cfg["batch_size"]) == (
            "synthetic",
            16,
            1,
            8,
        )
        assert base_lr(ml_collections.ConfigDict(cfg)) == pytest.approx(
            0.05 * 8 / 128
        )  # the 10ep recipe's lr, scaled to the batch
        assert 30_000 <= count(cfg["model"], 16)["flops"] == entry["complexity"]["flops"] <= 60_000


def test_setup_is_idempotent_extends_and_refuses_other_specs(tmp_path):
    out = str(tmp_path / "sweep")
    setup_sweep({**TINY, "n": 2}, out, log=lambda s: None)
    first = SweepDir(out).config("000001")
    setup_sweep({**TINY, "n": 2}, out, log=lambda s: None)  # same spec: nothing to do
    setup_sweep({**TINY, "n": 3}, out, log=lambda s: None)  # larger n: appended, the first models kept
    assert SweepDir(out).model_ids() == ["000000", "000001", "000002"] and SweepDir(out).config("000001") == first
    with pytest.raises(SweepError, match="different sweep.*seed"):
        setup_sweep({**TINY, "n": 3, "seed": 1}, out, log=lambda s: None)
    with pytest.raises(SweepError, match="already holds 3 models"):
        setup_sweep({**TINY, "n": 2}, out, log=lambda s: None)
    with pytest.raises(ConfigError, match="unknown"):
        setup_sweep({**TINY, "epochs": 3}, str(tmp_path / "other"), log=lambda s: None)


def _cli(*args, timeout=120):
    """``python -m regnet_jax.sweep ARGS``; no test compares what its trainers compute: XLA's cheapest compilation."""
    return subprocess.run(
        [sys.executable, "-m", "regnet_jax.sweep", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=background.environ(),
    )


@pytest.mark.timeout(120)
def test_cli_bad_input_gives_clear_errors(tmp_path):
    r = _cli("setup", f"--out={tmp_path / 'a'}", "--space=anynetx_z", "--n=2")
    assert r.returncode == 2 and "error: unknown design space 'anynetx_z'" in r.stderr
    r = _cli("setup", f"--out={tmp_path / 'b'}", "--space=regnetx", "--n=3", "--flops=1,2", "--max_draws=500")
    assert r.returncode == 2 and "only 0 of the 3 models" in r.stderr and "--flops" in r.stderr
    r = _cli("setup", f"--out={tmp_path / 'c'}", "--space=regnetx", "--n=3", "--flops=400M")
    assert r.returncode == 2 and "LO,HI" in r.stderr
    r = _cli("collect", f"--out={tmp_path / 'nothing'}")
    assert r.returncode == 2 and "not a sweep directory" in r.stderr and "setup" in r.stderr
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


@pytest.mark.timeout(120)
def test_launch_retries_gives_up_and_skips_finished(tmp_path, fake_trainer, monkeypatch):
    out = str(tmp_path / "sweep")
    setup_sweep(TINY, out, log=lambda s: None)
    # 000001 fails twice then succeeds; 000002 has a bad config (exit 2: not retried); 000003 always crashes.
    monkeypatch.setenv("FAKE_PLAN", json.dumps({"000001": [1, 1, 0], "000002": [2], "000003": [1]}))
    lines = []
    result = launch(
        out, LaunchOptions(trainer=fake_trainer, devices="none", max_retry=3, poll_s=0.05), log=lines.append
    )
    assert result["done"] == 2 and result["failed"] == ["000002", "000003"]
    assert _attempts(out, "000000") == ["done"]
    assert _attempts(out, "000001") == ["failed", "failed", "done"]
    assert _attempts(out, "000002") == ["bad config or data"]
    assert _attempts(out, "000003") == ["failed"] * 4  # 1 try + 3 retries
    assert any("ETA" in line for line in lines) and any("giving up" in line for line in lines)
    # A second launch trains nothing that finished, and tries the failed ones again.
    monkeypatch.setenv("FAKE_PLAN", "{}")
    result = launch(out, LaunchOptions(trainer=fake_trainer, devices="none", poll_s=0.05), log=lines.append)
    assert result["skipped"] == 2 and result["done"] == 4 and not result["failed"]
    assert _attempts(out, "000000") == ["done"] and _attempts(out, "000002") == ["bad config or data", "done"]

    rows = collect(out, log=None)
    assert [r["id"] for r in rows] == ["000000", "000001", "000002", "000003"]
    assert all(r["status"] == "done" for r in rows) and [r["attempts"] for r in rows] == [1, 3, 2, 5]
    assert [r["error"] for r in rows] == [50.0, 51.0, 52.0, 53.0] and rows[0]["error_source"] == "model"
    with open(SweepDir(out).results_csv) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and json.loads(table[0]["widths"]) == rows[0]["widths"]


def test_a_fork_is_named_after_its_changes_and_its_fields_are_in_the_table(tmp_path):
    out = str(tmp_path / "sweep")
    setup_sweep({**TINY, "n": 2, "model": {**TINY["model"], "activation": "silu"}}, out, log=lambda s: None)
    space = SweepDir(out).spec()["space"]
    assert space["name"].startswith("anynetx_c+") and "activation=silu" in space["name"]
    assert "anynetx_c forked: " in space["description"] and "activation=silu" in space["description"]
    assert space["description"] != get_space("anynetx_c").description
    assert f"design space {space['name']}" in open(SweepDir(out).config_py("000000")).read()
    rows = collect(out, log=None)
    assert [(r["activation"], r["stem_w"], r["resolution"]) for r in rows] == [("silu", 8, 16)] * 2
    with open(SweepDir(out).results_csv) as f:
        assert next(csv.DictReader(f))["activation"] == "silu"


def test_collect_statuses_and_no_duplicate_rows(tmp_path, fake_trainer, monkeypatch):
    out = str(tmp_path / "sweep")
    setup_sweep({**TINY, "num_epochs": 3}, out, log=lambda s: None)
    monkeypatch.setenv("FAKE_PLAN", json.dumps({"000001": [1]}))
    launch(
        out,
        LaunchOptions(trainer=fake_trainer, devices="none", max_retry=0, only=("0", "1"), poll_s=0.05),
        log=lambda s: None,
    )
    # 000002 looks interrupted (metrics, no summary); its resumed run repeated a step, which must count once.
    run2 = os.path.join(out, "runs", "000002")
    os.makedirs(run2)
    with open(os.path.join(run2, "eval_metrics.jsonl"), "w") as f:
        for rec in ({"step": 1, "epoch": 1, "top1_err": 70.0}, {"step": 1, "epoch": 1, "top1_err": 60.0}):
            f.write(json.dumps({**rec, "top5_err": 9.0, "loss": 1.0}) + "\n")
    for _ in range(2):
        rows = collect(out, log=None)
    assert [(r["id"], r["status"]) for r in rows] == [
        ("000000", "done"),
        ("000001", "failed"),
        ("000002", "incomplete"),
        ("000003", "pending"),
    ]
    assert rows[0]["error"] == 50.0 and rows[0]["final_top1_err"] == 50.0 and rows[0]["epochs"] == 3  # best over epochs
    assert rows[2]["epochs"] == 1 and rows[2]["best_top1_err"] == 60.0
    with open(SweepDir(out).results_jsonl) as f:
        assert len(f.readlines()) == 4


@pytest.mark.timeout(120)
def test_launch_runs_one_model_per_device_at_once(tmp_path, fake_trainer, monkeypatch):
    slots, _ = device_slots("gpu:0,1", 0)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1"]
    slots, _ = device_slots("gpu:3", 2)  # two models share GPU 3: no preallocation
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["3", "3"] and slots[0][
        "XLA_PYTHON_CLIENT_PREALLOCATE"
    ] == "false"
    slots, _ = device_slots("tpu:0,1,2,3", 0)
    assert [s["TPU_VISIBLE_CHIPS"] for s in slots] == ["0", "1", "2", "3"] and len(
        {s["TPU_PROCESS_PORT"] for s in slots}
    ) == 4
    assert device_slots("cpu", 0)[0] == [{"JAX_PLATFORMS": "cpu"}]
    with pytest.raises(ConfigError, match="--devices"):
        device_slots("fpga:0", 0)

    out = str(tmp_path / "sweep")
    setup_sweep(TINY, out, log=lambda s: None)
    monkeypatch.setenv("FAKE_SLEEP", "1.5")
    launch(out, LaunchOptions(trainer=fake_trainer, devices="gpu:0,1", poll_s=0.05), log=lambda s: None)
    ran = []
    for mid in SweepDir(out).model_ids():
        with open(os.path.join(out, "runs", mid, "ran.jsonl")) as f:
            ran += [json.loads(line) for line in f]
    assert sorted(r["gpu"] for r in ran) == ["0", "0", "1", "1"]
    first, second = sorted(ran, key=lambda r: r["start"])[:2]
    assert second["start"] < first["end"]  # two trainers ran at the same time


def test_shard_only_and_slurm_script(tmp_path, fake_trainer):
    out = str(tmp_path / "sweep")
    setup_sweep(TINY, out, log=lambda s: None)
    launch(out, LaunchOptions(trainer=fake_trainer, devices="none", shard="1/2", poll_s=0.05), log=lambda s: None)
    assert [os.path.exists(os.path.join(out, "runs", m, "summary.json")) for m in SweepDir(out).model_ids()] == [
        False,
        True,
        False,
        True,
    ]
    with pytest.raises(ConfigError, match="--only"):
        launch(out, LaunchOptions(trainer=fake_trainer, only=("9",)), log=lambda s: None)
    with pytest.raises(ConfigError, match="--shard"):
        launch(out, LaunchOptions(trainer=fake_trainer, shard="2/2"), log=lambda s: None)
    text = open(write_slurm_script(out, partition="gpu", max_jobs=8)).read()
    assert (
        "#SBATCH --array=0-3%8" in text and "--only=$SLURM_ARRAY_TASK_ID" in text and "#SBATCH --partition=gpu" in text
    )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\tZ" not in next(line for line in f if line.startswith("State:"))  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.timeout(120)
def test_trainers_stop_when_the_launcher_is_killed(tmp_path, fake_trainer):
    out = str(tmp_path / "sweep")
    setup_sweep({**TINY, "n": 1}, out, log=lambda s: None)
    proc = subprocess.Popen([sys.executable, "-m", "regnet_jax.sweep", "launch", f"--out={out}", f"--trainer={fake_trainer}"],
                            env={**os.environ, "FAKE_SLEEP": "100"}, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    pid_file = os.path.join(out, "runs", "000000", "pid")
    try:
        _wait_for(pid_file, proc, timeout=60)
        time.sleep(0.5)
        trainer = int(open(pid_file).read())
        assert _alive(trainer)
        proc.kill()  # SIGKILL the launcher only: no chance to clean up
        proc.wait(timeout=30)
        t0 = time.time()
        while _alive(trainer) and time.time() - t0 < 20:
            time.sleep(0.2)
        assert not _alive(trainer), "the trainer outlived its launcher"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_for(path, proc, timeout):
    wait_until(lambda: os.path.exists(path), [proc], f"{path} appeared", timeout)


@background.scenario
def sweep_killed_and_resumed(tmp):
    """setup -> launch (killed once the first model is done) -> launch --in_process -> collect -> analyze, each by
    the CLI: each command's outcome, and the finished model's files before and after the resume."""
    out = str(tmp / "sweep")
    setup = _cli("setup", f"--out={out}", "--n=2", *TINY_FLAGS)
    if setup.returncode:
        return {"setup": setup}
    # Launch (one trainer subprocess per model), kill the whole launch as soon as the first model is done.
    log = open(tmp / "launch1.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "regnet_jax.sweep", "launch", f"--out={out}", "--devices=cpu"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                            env=background.environ())  # fmt: skip
    try:
        _wait_for(os.path.join(out, "runs", "000000", "summary.json"), proc, timeout=300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    summary0 = open(os.path.join(out, "runs", "000000", "summary.json")).read()
    # Resume (in-process this time): the finished model is skipped, the other one trained.
    steps = {
        "setup": setup,
        "out": out,
        "summary0": summary0,
        "resume": _cli("launch", f"--out={out}", "--in_process", timeout=300),
    }
    if steps["resume"].returncode:
        return steps
    steps["resumed"] = [open(os.path.join(out, "runs", "000000", f)).read() for f in ("summary.json", "train.log")]
    steps["collect"] = _cli("collect", f"--out={out}")
    steps["analyze"] = _cli("analyze", f"--out={out}", "--bootstrap=500")
    return steps


@pytest.mark.timeout(420)
def test_end_to_end_with_the_real_trainer_killed_and_resumed(sweep_killed_and_resumed):
    steps = sweep_killed_and_resumed.outcome()
    r = steps["setup"]
    assert r.returncode == 0, r.stderr
    out, summary0 = steps["out"], steps["summary0"]
    r = steps["resume"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 done already (skipped), 1 to train" in r.stdout
    summary, train_log = steps["resumed"]  # as the resume left them
    assert summary == summary0
    assert train_log.count("=== attempt") == 1
    r = steps["collect"]
    assert r.returncode == 0 and "2 done" in r.stdout
    rows = [json.loads(line) for line in open(os.path.join(out, "results.jsonl"))]
    assert [r["id"] for r in rows] == ["000000", "000001"] and all(
        r["status"] == "done" and 0 <= r["error"] <= 100 for r in rows
    )
    assert all(r["epochs"] == 1 and r["steps"] == 1 for r in rows)
    r = steps["analyze"]
    assert r.returncode == 0, r.stderr
    report = os.path.join(out, "analysis")
    html = open(os.path.join(report, "analysis.html")).read()
    assert html.count("data:image/png;base64,") >= 4 and "<img" in html
    numbers = json.load(open(os.path.join(report, "analysis.json")))
    (sweep,) = numbers["sweeps"].values()
    assert sweep["done"] == 2 and sweep["error"]["min"] == min(r["error"] for r in rows)
    assert os.path.exists(os.path.join(report, "edf.png"))
