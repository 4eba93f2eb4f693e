"""Complexity counter vs pycls's integers (pycls dev/model_complexity.json) and the zoo's built architectures."""

import json
import subprocess
import sys

import pytest

from regnet_jax.models import model_spec, zoo
from regnet_jax.models.complexity import count

# (flops, params, acts) from pycls dev/model_complexity.json (docs/fidelity.md#complexity-counting).
EXPECTED = {
    "regnetx_200mf": (199_040_872, 2_684_792, 2_164_056),
    "regnetx_400mf": (397_678_568, 5_157_512, 3_143_272),
    "regnetx_600mf": (600_891_112, 6_196_040, 3_975_096),
    "regnetx_800mf": (799_700_712, 7_259_656, 5_148_744),
    "regnetx_1.6gf": (1_602_850_792, 9_190_136, 7_933_512),
    "regnetx_3.2gf": (3_176_622_952, 15_296_552, 11_367_432),
    "regnetx_4gf": (3_964_499_816, 22_118_248, 12_201_608),
    "regnetx_6.4gf": (6_460_292_264, 26_209_256, 16_369_744),
    "regnetx_8gf": (7_995_133_416, 39_572_648, 14_059_688),
    "regnetx_12gf": (12_086_679_016, 46_106_056, 21_366_568),
    "regnetx_16gf": (15_940_756_456, 54_278_536, 25_515_496),
    "regnetx_32gf": (31_735_930_792, 107_811_560, 36_302_160),
    "regnety_200mf": (199_519_076, 3_162_996, 2_168_052),
    "regnety_400mf": (401_849_056, 4_344_144, 3_892_496),
    "regnety_600mf": (601_227_608, 6_055_160, 4_334_296),
    "regnety_800mf": (797_183_328, 6_263_168, 5_249_888),
    "regnety_1.6gf": (1_612_087_326, 11_202_430, 8_044_814),
    "regnety_3.2gf": (3_176_496_162, 19_436_338, 11_263_418),
    "regnety_4gf": (3_973_301_344, 20_646_656, 12_287_200),
    "regnety_6.4gf": (6_355_221_876, 30_583_252, 16_407_188),
    "regnety_8gf": (7_963_074_196, 39_180_068, 17_968_916),
    "regnety_12gf": (12_092_395_504, 51_822_544, 21_384_496),
    "regnety_16gf": (15_911_534_044, 83_590_140, 23_041_228),
    "regnety_32gf": (32_279_583_362, 145_046_770, 30_261_570),
    "resnet50": (4_089_185_256, 25_557_032, 11_315_688),
    "resnext50_32x4d": (4_230_480_872, 25_028_904, 14_602_216),
}

# Built stage widths / depths / group widths as pycls/models/regnet.py: generate_regnet_full builds them from the dds_baselines yamls (after quantisation and compatibility).
STAGES = {
    "regnetx_200mf": ((24, 56, 152, 368), (1, 1, 4, 7), (8, 8, 8, 8)),
    "regnetx_400mf": ((32, 64, 160, 384), (1, 2, 7, 12), (16,) * 4),
    "regnetx_600mf": ((48, 96, 240, 528), (1, 3, 5, 7), (24,) * 4),
    "regnetx_800mf": ((64, 128, 288, 672), (1, 3, 7, 5), (16,) * 4),
    "regnetx_1.6gf": ((72, 168, 408, 912), (2, 4, 10, 2), (24,) * 4),
    "regnetx_3.2gf": ((96, 192, 432, 1008), (2, 6, 15, 2), (48,) * 4),
    "regnetx_4gf": ((80, 240, 560, 1360), (2, 5, 14, 2), (40,) * 4),
    "regnetx_6.4gf": ((168, 392, 784, 1624), (2, 4, 10, 1), (56,) * 4),
    "regnetx_8gf": ((80, 240, 720, 1920), (2, 5, 15, 1), (80, 120, 120, 120)),
    "regnetx_12gf": ((224, 448, 896, 2240), (2, 5, 11, 1), (112,) * 4),
    "regnetx_16gf": ((256, 512, 896, 2048), (2, 6, 13, 1), (128,) * 4),
    "regnetx_32gf": ((336, 672, 1344, 2520), (2, 7, 13, 1), (168,) * 4),
    "regnety_200mf": ((24, 56, 152, 368), (1, 1, 4, 7), (8,) * 4),
    "regnety_400mf": ((48, 104, 208, 440), (1, 3, 6, 6), (8,) * 4),
    "regnety_600mf": ((48, 112, 256, 608), (1, 3, 7, 4), (16,) * 4),
    "regnety_800mf": ((64, 128, 320, 768), (1, 3, 8, 2), (16,) * 4),
    "regnety_1.6gf": ((48, 120, 336, 888), (2, 6, 17, 2), (24,) * 4),
    "regnety_3.2gf": ((72, 216, 576, 1512), (2, 5, 13, 1), (24,) * 4),
    "regnety_4gf": ((128, 192, 512, 1088), (2, 6, 12, 2), (64,) * 4),
    "regnety_6.4gf": ((144, 288, 576, 1296), (2, 7, 14, 2), (72,) * 4),
    "regnety_8gf": ((168, 448, 896, 2016), (2, 4, 10, 1), (56,) * 4),
    "regnety_12gf": ((224, 448, 896, 2240), (2, 5, 11, 1), (112,) * 4),
    "regnety_16gf": ((224, 448, 1232, 3024), (2, 4, 11, 1), (112,) * 4),
    "regnety_32gf": ((232, 696, 1392, 3712), (2, 5, 12, 1), (232,) * 4),
}


def test_zoo_is_complete():
    assert sorted(zoo.ZOO) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_complexity_matches_pycls(name):
    cx = count(zoo.ZOO[name].model)
    assert (cx["flops"], cx["params"], cx["acts"]) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_zoo_built_stages_match_table(name):
    spec = model_spec(zoo.ZOO[name].model)
    assert (spec.widths, spec.depths, spec.group_ws) == STAGES[name]
    assert spec.strides == (2, 2, 2, 2)


def test_resolution_changes_flops_and_acts_but_not_params():
    small, big = count(zoo.ZOO["regnety_400mf"].model, 112), count(zoo.ZOO["regnety_400mf"].model, 224)
    assert small["params"] == big["params"]
    assert small["flops"] < big["flops"] and small["acts"] < big["acts"]


def test_zoo_config_docstrings_state_the_counted_complexity():
    """Each configs/<name>.py docstring must quote the numbers the counter gives (keeps the docs true)."""
    import importlib.util
    import pathlib

    for name in EXPECTED:
        path = pathlib.Path(__file__).parents[1] / "configs" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"cfg_{name.replace('.', '_')}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        flops, params, acts = EXPECTED[name]
        for n in (flops, params, acts):
            assert f"{n:,}" in mod.__doc__, (name, n)
        assert f"configs/{name}.py" in mod.__doc__
        assert mod.get_config().model.to_dict() == mod.get_config("25ep").model.to_dict()


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "regnet_jax.complexity", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_json_overrides_and_resolution():
    out = _cli("--config=configs/regnetx_400mf.py", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == dict(zip(("flops", "params", "acts"), EXPECTED["regnetx_400mf"]))
    m = dict(zoo.ZOO["regnetx_400mf"].model, depth=20)
    out = _cli("--config=configs/regnetx_400mf.py", "--json", "--config.model.depth=20", "--resolution=160")
    assert json.loads(out.stdout) == count(m, 160)


def test_cli_all_table_and_bad_override():
    out = _cli("--all")
    assert out.returncode == 0, out.stderr
    assert "regnety_32gf" in out.stdout and "32,279,583,362" in out.stdout
    bad = _cli("--config=configs/regnetx_400mf.py", "--config.model.wm=0.9")
    assert bad.returncode == 2
    assert "config.model.wm=0.9" in bad.stderr and "> 1" in bad.stderr
