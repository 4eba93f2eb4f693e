"""Config mistakes on the command line: one line naming the field or file and the fix, exit status 2.

The flag parsing every CLI shares (regnet_jax.core.cli.parse_flags) is tested in-process on each kind of mistake; two
CLIs are run end to end, and the others are checked to define their --config through it.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags

from regnet_jax.config import ConfigError, define_config_flag, load_config_file
from regnet_jax.core.cli import parse_flags
from tests.helpers_train import REPO, cli_env


def _parse(argv: list[str], capsys) -> tuple[object, str]:
    """(the parsed config, or the exit status) and stderr of parsing ``argv`` with a fresh --config flag."""
    fv = flags.FlagValues()
    define_config_flag("config", "a config file", flag_values=fv)
    flags.DEFINE_string("workdir", None, "a directory", flag_values=fv)
    try:
        parse_flags(["prog", *argv], fv)
        return fv.config, capsys.readouterr().err
    except SystemExit as e:
        return e.code, capsys.readouterr().err


@pytest.fixture
def broken_configs(tmp_path) -> dict[str, pathlib.Path]:
    files = {
        "syntax": "import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict(\n    return c\n",
        "bug": "import ml_collections\n\ndef get_config():\n    return undefined_name\n",
        "nofunction": "X = 1\n",
    }
    out = {}
    for name, text in files.items():
        out[name] = tmp_path / f"{name}.py"
        out[name].write_text(text)
    return out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--config.model.foo=1"], "--config.model.foo=1 needs a config file to override: add --config=FILE"),
        (
            ["--config=configs/quickstart.py", "--config.model.foo=1"],
            "config.model has no field 'foo'; its fields are activation, block_type",
        ),
        (
            ["--config=configs/quickstart.py", "--config.optim.bse_lr=0.1"],
            "config.optim has no field 'bse_lr'; did you mean --config.optim.base_lr?",
        ),
        (
            ["--config=configs/quickstart.py", "--config.base_lr=0.1"],
            "config has no field 'base_lr'; did you mean --config.optim.base_lr?",
        ),
        (
            ["--config=configs/quickstart.py", "--config.dataset.nme=x"],
            "config.dataset has no field 'nme'; did you mean --config.dataset.name?",
        ),
        (["--config=configs/nope.py"], "config file configs/nope.py does not exist (looked in"),
        (["--config=configs/regnetx_400mfx.py"], "did you mean configs/regnetx_400mf.py"),
        (
            ["--config=configs/regnetx_400mf.py:37ep"],
            "schedule '37ep' is unknown: use one of ['100ep', '10ep', '25ep']",
        ),
        (["--config=configs/quickstart.py:25ep"], "configs/quickstart.py takes no ':' argument"),
        (
            ["--config=configs/finetune_example.py"],
            "give the pretrained weights: --config=configs/finetune_example.py:",
        ),
        (
            ["--config=configs/quickstart.py", "--config.batch_size=abc"],
            "config.batch_size is an integer (it is 64 now); 'abc' is not one",
        ),
        (["--config=configs/quickstart.py", "--config.optim.base_lr=fast"], "config.optim.base_lr is a number"),
        (
            ["--config=configs/quickstart.py", "--config.dataset.flip=maybe"],
            "config.dataset.flip is True or False, not 'maybe'",
        ),
        (
            ["--config=configs/quickstart.py", "--config.num_epochs"],
            "config.num_epochs needs a value: write --config.num_epochs=VALUE",
        ),
        (
            ["--config=configs/quickstart.py", "--config.dataset.mean=0.5"],
            "config.dataset.mean is a tuple: write a Python list or tuple",
        ),
        (
            ["--config=configs/resnet50.py", "--config.model.depths=(3,'a',23,3)"],
            "config.model.depths holds a number; 'a' is not",
        ),
        (["--config=configs/quickstart.py", "--config.model=1"], "config.model is a group of fields"),
        (["--config=configs/quickstart.py", "--workdr=/tmp/x"], "Unknown command line flag 'workdr'"),
    ],
)
def test_each_mistake_is_one_line_and_exit_2(argv, expected, capsys):
    code, err = _parse(argv, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err


def test_broken_config_files_name_the_file_and_line(broken_configs, capsys):
    for name, expected in (("syntax", "line 4: SyntaxError: '(' was never closed"), ("bug", "line 4: NameError: name 'undefined_name'"),
                           ("nofunction", "has no get_config() function")):  # fmt: skip
        code, err = _parse([f"--config={broken_configs[name]}"], capsys)
        assert code == 2 and err.count("\n") == 1 and str(broken_configs[name]) in err and expected in err, err


def test_every_field_is_overridable_lists_included(capsys):
    config, err = _parse(
        ["--config=configs/resnet50.py", "--config.model.depths=(3,4,23,3)", "--config.model.widths=[256, 512, 1024, 2048]",
         "--config.dataset.aspect_ratio=0.5,2", "--config.optim.base_lr=1", "--noconfig.dataset.flip", "--config.optim.nesterov=false",
         "--config.dataset.name=folder", "--workdir=/tmp/x"], capsys,
    )  # fmt: skip
    assert not err
    assert config.model.depths == [3, 4, 23, 3] and config.model.widths == [256, 512, 1024, 2048]
    assert (
        config.dataset.aspect_ratio == (0.5, 2)
        and config.optim.base_lr == 1.0
        and isinstance(config.optim.base_lr, float)
    )
    assert config.dataset.flip is False and config.optim.nesterov is False and config.dataset.name == "folder"
    assert config.is_locked


def test_a_workdir_config_json_loads(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"batch_size": 8, "optim": {"base_lr": 0.1}}')
    config, _ = _parse([f"--config={tmp_path / 'config.json'}", "--config.batch_size=16"], capsys)
    assert config.batch_size == 16 and config.optim.base_lr == 0.1
    (tmp_path / "bad.json").write_text('{"batch_size": 8,\n false}')
    with pytest.raises(ConfigError, match=r"bad.json line 2: invalid JSON"):
        load_config_file(str(tmp_path / "bad.json"))


CLIS = ["train", "evaluate", "complexity", "models/__main__", "benchmark", "convert"]


@pytest.mark.parametrize("module", CLIS)
def test_every_cli_defines_its_config_flag_through_the_shared_parser(module):
    """The in-process tests above then hold for each of them (sweep loads its spec files with load_config_file)."""
    src = (REPO / "regnet_jax" / f"{module}.py").read_text()
    assert re.search(r'define_config_flag\(\s*"config"', src) and "run(main" in src and "config_flags" not in src


def test_sweep_spec_file_mistakes_are_config_errors(broken_configs):
    from regnet_jax.design_space.sweep_setup import read_spec_file

    with pytest.raises(ConfigError, match=r"line 4: SyntaxError"):
        read_spec_file(str(broken_configs["syntax"]))
    with pytest.raises(ConfigError, match=r"experiments/nope.py does not exist"):
        read_spec_file("experiments/nope.py")


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=120
    )


def test_complexity_cli_end_to_end():
    out = _cli("regnet_jax.complexity", "--config=configs/resnet50.py", "--config.model.depths=(3,4,23,3)", "--json")
    assert out.returncode == 0, out.stderr
    assert '"params": 44549160' in out.stdout  # ResNet-101's parameter count (torchvision: 44,549,160)
    out = _cli("regnet_jax.complexity", "--config=configs/resnet50.py", "--config.model.dpeths=(3,4,23,3)")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: --config.model.dpeths=(3,4,23,3): config.model has no field 'dpeths'; did you mean --config.model.depths?"
    ]


def test_train_cli_end_to_end():
    out = _cli(
        "regnet_jax.train",
        "--config=configs/quickstart.py",
        "--workdir=/nonexistent/never_created",
        "--config.optim.bse_lr=0.1",
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip().splitlines()[-1]
        == "error: --config.optim.bse_lr=0.1: config.optim has no field 'bse_lr'; did you mean --config.optim.base_lr?"
    )
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 30}, "config.batch_size=30 is not divisible by the 8 devices: use a multiple of 8"),
        ({"freeze_trunk": True}, "config.freeze_trunk=True needs config.init_from"),
        ({"dataset.name": "folder", "dataset.data_dir": "EMPTY"}, "folder dataset: found no images"),
    ],
)
def test_trainer_refuses_bad_values_before_any_work(overrides, message, tmp_path):
    """Reliability-table rows that had no test: each is refused before anything is written but the workdir."""
    from regnet_jax.train import train_and_evaluate
    from tests.helpers_train import tiny_config

    for split in ("train", "val"):
        (tmp_path / "empty" / split / "cat").mkdir(parents=True)
    overrides = {k: str(tmp_path / "empty") if v == "EMPTY" else v for k, v in overrides.items()}
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_and_evaluate(tiny_config(**overrides), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
