"""Every documented command runs in CI (in smoke form, REGNET_JAX_SMOKE=1) or is listed with the reason it cannot.

The commands are read from the docs when the tests run (tests/doc_commands.py), so the harness follows the docs as
they change; tests/doc_runner.py runs them. A failing command fails ``test_documented_commands_run`` with its
command line, its log's tail and the path of the whole log; a command no rule covers fails
``test_every_documented_command_is_run_or_listed``.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

from tests import background, doc_commands
from tests.doc_commands import DocCommand, markdown_commands, plan

REPO = pathlib.Path(__file__).resolve().parents[1]
HARNESS_TIMEOUT_S = 900


def test_every_documented_command_is_run_or_listed():
    plans, unclassified = plan(doc_commands.extract_commands())
    assert not unclassified, (
        "documented commands that are neither run nor listed (add a rule in tests/doc_commands.py):\n"
        + "\n".join(f"  {c.source}: {why}" for c, why in unclassified)
    )
    assert sum(p.action == "run" for p in plans) >= 30 and all(p.notes for p in plans if p.action == "skip")


def test_extraction_binding_and_rules():
    md = "\n".join([
        "Run `python -m regnet_jax.train --config=configs/quickstart.py --workdir=/tmp/q` first; `python -m regnet_jax.models` is a mention.",
        "```bash",
        "python -m regnet_jax.train --config=configs/regnety_4gf.py \\",
        "    --workdir=DIR            # a comment",
        "python -m regnet_jax.evaluate --checkpoint=DIR [--ema]",
        "srun python -m regnet_jax.train ...",
        "```",
        "```python",
        "python -m not_a_command",
        "```",
        "    python -m regnet_jax.predict --checkpoint=weights/w cat.jpg",
        "    frobnicate --all",
        "```",
        "python -m regnet_jax.sweep launch --out=sweeps/NOPE_X",
        "```",
    ])  # fmt: skip
    cmds = markdown_commands("x.md", md)
    assert [(c.line, c.text) for c in cmds] == [
        (1, "python -m regnet_jax.train --config=configs/quickstart.py --workdir=/tmp/q"),
        (3, "python -m regnet_jax.train --config=configs/regnety_4gf.py --workdir=DIR"),
        (5, "python -m regnet_jax.evaluate --checkpoint=DIR [--ema]"),
        (6, "srun python -m regnet_jax.train ..."),
        (11, "python -m regnet_jax.predict --checkpoint=weights/w cat.jpg"),
        (14, "python -m regnet_jax.sweep launch --out=sweeps/NOPE_X"),
    ]
    plans, unclassified = plan([*cmds, DocCommand("x.md", 99, "frobnicate --all")])
    run, train, evaluate, srun, predict = plans
    assert run.shell == "python -m regnet_jax.train --config=configs/quickstart.py --workdir=_abs/tmp/q"
    assert train.shell.endswith("--workdir=DIR_3") and evaluate.shell.endswith("--checkpoint=DIR_3")
    assert evaluate.deps == [1] and evaluate.notes == ["optional [flags] dropped"]
    assert (srun.action, srun.notes) == ("skip", ["needs a SLURM cluster"])
    assert ("image", "cat.jpg", {}) in predict.ensures and ("weights", "weights/w", {}) in predict.ensures
    assert [c.line for c, _ in unclassified] == [14, 99]
    assert "NOPE_X" in unclassified[0][1] and "no rule" in unclassified[1][1]


def _run_harness(plans, tmp_path, *extra: str) -> dict:
    (tmp_path / "plan.json").write_text(json.dumps([p.to_json() for p in plans]))
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "doc_runner.py"), f"--plan={tmp_path / 'plan.json'}", f"--scratch={tmp_path / 'scratch'}",
         f"--out={out}", *extra], capture_output=True, text=True, timeout=HARNESS_TIMEOUT_S, env=background.environ(),
    )  # fmt: skip
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_runner_reports_each_commands_status_and_log(tmp_path):
    cmds = [
        DocCommand("x.md", 1, "python -m regnet_jax.sweep spaces"),
        DocCommand("x.md", 2, "python -m regnet_jax.complexity --config=configs/nope.py"),
    ]
    plans, _ = plan(cmds)
    results = _run_harness(plans, tmp_path, "--preload=")["results"]
    assert results["0"]["rc"] == 0 and "anynetx_a" in pathlib.Path(results["0"]["log"]).read_text()
    assert results["1"]["rc"] == 2 and "error: config file configs/nope.py does not exist" in results["1"]["log_tail"]
    rows, failures = _report(plans, results)
    assert len(rows) == 2 and len(failures) == 1 and failures[0].startswith("x.md:2: `python -m regnet_jax.complexity")


def _docs_figures():
    spec = importlib.util.spec_from_file_location("docs_figures", REPO / "benchmarks" / "docs_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_carry_the_figures_scripts_latest_output():
    figures_script = _docs_figures()
    figures = json.loads(figures_script.FIGURES_JSON.read_text())
    quoted = figures_script.spans()
    assert quoted, "no <!-- figure:NAME --> spans found in the docs"
    for name, places in quoted.items():
        assert name in figures, (
            f"{name} is quoted by {[str(d) for d, _ in places]} but not measured (docs/figures.json)"
        )
        for doc, text in places:
            assert text == figures[name]["text"], (
                f"{doc.name} quotes {name} as {text!r}; benchmarks/docs_figures.py measured {figures[name]['text']!r}"
            )
    for name, f in figures.items():
        assert f["command"] and f["date"] and f["machine"] and f["load"], (
            f"{name} lacks its command, date, machine or load"
        )
        assert f"`{name}`" in figures_script.FIGURES_MD.read_text(), (
            f"docs/figures.md lacks {name}: rerun benchmarks/docs_figures.py"
        )


def _report(plans, results: dict) -> tuple[list[str], list[str]]:
    rows, failures = [], []
    for i, p in enumerate(plans):
        r = results.get(str(p.same_as if p.action == "same" else i))
        if p.action == "skip":
            rows.append(f"{p.cmd.source}: not run: {'; '.join(p.notes)}")
            continue
        status = "MISSING" if r is None else f"rc {r['rc']}, {r['wall_s']} s wall, {r['cpu_s']} s CPU"
        rows.append(f"{p.cmd.source}: {p.action}: {status}: {p.shell}")
        if r is None or r["rc"] != 0:
            tail = "(no result)" if r is None else f"{r['log_tail']}\n  (whole log: {r['log']})"
            failures.append(f"{p.cmd.source}: `{p.cmd.text}`\n  ran: `{p.shell}`\n{tail}")
    return rows, failures


@background.scenario
def documented_commands(tmp):
    """Every documented command, run by the harness: (the plans, the harness's summary)."""
    plans, _ = plan(doc_commands.extract_commands())
    return plans, _run_harness(plans, tmp)


def test_documented_commands_run(documented_commands):
    plans, summary = documented_commands.outcome()
    rows, failures = _report(plans, summary["results"])
    print("\n".join(rows))
    print(
        f"harness: {summary['wall_s']} s wall ({summary['preload_s']} s preloading), {summary['cpu_s']} s CPU, load {summary['load_average']}"
    )
    assert not failures, f"{len(failures)} documented command(s) failed:\n\n" + "\n\n".join(failures)
