"""The benchmark tool (regnet_jax.benchmark) and the benchmarks/ helpers: results are consistent, data parallel over
the emulated devices works with both train steps, bad input is refused with a clear message, the zoo outputs (table,
plot) are written, the PyTorch twin is the same network, and the pipeline verdict is right."""

import json
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax.benchmarking import timing, zoo_report
from regnet_jax.config import ConfigError, base_config
from regnet_jax.models import complexity, zoo
from tests import background

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

TINY = dict(type="anynet", stem_type="res_stem_cifar", stem_w=8, block_type="res_bottleneck_block",
            depths=[1, 1], widths=[16, 32], strides=[1, 2], bot_muls=[1.0, 1.0], group_ws=[8, 8],
            se_ratio=0.25, num_classes=10)  # fmt: skip


def _config():
    c = base_config(TINY, batch_size=16)
    c.resolution = 16
    return c


def _check_result(r, batch, mode, devices):
    macs = complexity.count(TINY, 16)["flops"]
    assert r.batch == batch and r.mode == mode and r.devices == devices and r.backend == "cpu"
    assert r.steps == 2 and r.compile_s > 0 and r.ms_per_step_min <= r.ms_per_step
    assert r.images_per_s == pytest.approx(batch / (r.ms_per_step / 1e3))
    assert r.ms_per_image == pytest.approx(r.ms_per_step / batch)
    assert r.gflops_per_image == pytest.approx(macs * (3 if mode == "train" else 1) / 1e9)
    assert r.tflops == pytest.approx(2 * r.gflops_per_image * r.images_per_s / 1e3)
    assert r.params == complexity.count(TINY, 16)["params"]


def test_train_step_data_parallel_over_all_devices():
    assert len(jax.devices()) == 8  # tests/conftest.py
    r = timing.benchmark(_config(), mode="train", batch=16, steps=2, warmup=1, name="tiny")
    _check_result(r, 16, "train", 8)
    assert r.step_impl == "parallel" and r.model == "tiny"


def test_train_step_on_two_devices():
    config = _config()
    prep = timing.prepare(config, mode="train", batch=4, num_devices=2, step_impl="parallel")
    assert prep.step_impl == "parallel" and len(prep.devices) == 2
    times = []
    for _ in range(2):
        t = time.perf_counter()
        loss = float(prep.run()["loss"])  # the replicated state stays usable from step to step
        times.append(time.perf_counter() - t)
        assert np.isfinite(loss)
    _check_result(timing.make_result(config, "tiny", "train", "float32", 4, prep, times), 4, "train", 2)
    compiled_only = timing.make_result(config, "tiny", "train", "float32", 4, prep, [])
    assert compiled_only.images_per_s is None and compiled_only.tflops is None and "compile" in compiled_only.summary()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch=12), "--batch=12 is invalid: it must be a positive multiple of the 8 device(s)"),
        (dict(batch=8, num_devices=9), "--devices=9 is invalid: this host has 8"),
        (dict(mode="fit"), "--mode='fit' is invalid"),
        (dict(dtype="float64"), "--dtype='float64' is invalid"),
        (dict(steps=0), "--steps=0"),
        (dict(step_impl="pmap"), "--step='pmap' is invalid"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ConfigError) as e:
        timing.benchmark(_config(), **{"batch": 8, **kwargs})
    assert message in str(e.value)


def _fake_results():
    rows = []
    for i, (name, gf, acts) in enumerate(
        [
            ("regnetx_200mf", 0.2, 2.2),
            ("regnetx_400mf", 0.4, 3.1),
            ("regnety_400mf", 0.4, 3.9),
            ("regnety_800mf", 0.8, 5.2),
        ]
    ):
        ms = 1.0 + 2.0 * acts + 0.1 * i
        rows.append(
            timing.Result(
                model=name,
                mode="infer",
                dtype="float32",
                batch=8,
                resolution=224,
                devices=1,
                backend="cpu",
                device_kind="cpu",
                conv_impl="auto",
                step_impl="forward",
                compile_s=1.0,
                ms_per_step=ms * 8,
                ms_per_step_min=ms * 8,
                images_per_s=1e3 / ms,
                ms_per_image=ms,
                gflops_per_image=gf,
                tflops=0.1,
                peak_memory_bytes=None,
                params=1,
                acts=int(acts * 1e6),
                steps=3,
                load_average=None,
            )  # fmt: skip
        )
    return rows


def test_zoo_outputs_table_csv_json_and_plot(tmp_path):
    rows = _fake_results()
    paths = zoo_report.write_zoo_outputs(rows, str(tmp_path / "zoo"))
    assert json.loads(pathlib.Path(paths["json"]).read_text())[2]["model"] == "regnety_400mf"
    assert pathlib.Path(paths["csv"]).read_text().splitlines()[0].startswith("model,mode,dtype")
    table = pathlib.Path(paths["table"]).read_text()
    assert all(r.model in table for r in rows) and "| ms/image |" in table
    assert pathlib.Path(paths["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    acts, ms = [r.acts for r in rows], [r.ms_per_image for r in rows]
    assert zoo_report.pearson_r(acts, ms) == pytest.approx(np.corrcoef(acts, ms)[0, 1])
    assert np.isnan(zoo_report.pearson_r([1.0], [2.0]))


def test_zoo_names():
    assert len(zoo_report.zoo_names()) == 24 and all(n.startswith("regnet") for n in zoo_report.zoo_names())
    assert zoo_report.zoo_names("regnetx_200mf, resnet50") == ["regnetx_200mf", "resnet50"]
    with pytest.raises(ConfigError, match="unknown model"):
        zoo_report.zoo_names("regnetz_500mf")


@background.scenario
def zoo_benchmark_cli(tmp):
    """`python -m regnet_jax.benchmark --zoo` on two zoo models: (the finished process, the output directory). The
    timings are only checked to be positive: XLA's cheapest compilation."""
    args = ["--zoo", "--zoo_models=regnetx_200mf,regnety_200mf", "--mode=infer", "--batch=2", "--steps=1", "--warmup=0",
            "--resolution=32", f"--out={tmp}", "--json"]  # fmt: skip
    env = background.environ(JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-m", "regnet_jax.benchmark", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=200)  # fmt: skip
    return p, tmp


@pytest.mark.timeout(240)
def test_cli_zoo_json_table_and_plot(zoo_benchmark_cli):
    p, tmp_path = zoo_benchmark_cli.outcome()
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)  # progress went to stderr
    assert [r["model"] for r in rows] == ["regnetx_200mf", "regnety_200mf"] and all(r["images_per_s"] > 0 for r in rows)
    for r in rows:  # inference counts the forward multiply-adds once
        assert r["gflops_per_image"] == pytest.approx(
            complexity.count(zoo.get_config(r["model"]).model, 32)["flops"] / 1e9
        )
        assert r["devices"] == 1 and r["step_impl"] == "forward" and r["steps"] == 1
    assert "[2/2] regnety_200mf" in p.stderr and "| regnety_200mf |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "zoo_time.png").stat().st_size > 1000 and (tmp_path / "results.csv").exists()


# ---------------------------------------------------------------- benchmarks/


def test_torch_twin_is_the_same_network():
    torch = pytest.importorskip("torch")
    from torch_regnet import build_torch_model

    from regnet_jax.models import create_model
    from regnet_jax.weights.layouts import to_pycls

    model = create_model(TINY)
    x = np.random.RandomState(0).randn(2, 16, 16, 3).astype(np.float32)
    v = model.init(jax.random.PRNGKey(0), jnp.asarray(x))
    # Non-trivial BN statistics and affine parameters, so that a mis-wired BN cannot pass.
    v = jax.tree_util.tree_map(lambda a: a + 0.2 * jnp.abs(jax.random.normal(jax.random.PRNGKey(1), a.shape)), v)
    twin = build_torch_model(model.spec)
    twin.load_state_dict({k: torch.from_numpy(np.array(a)) for k, a in to_pycls(v).items()})
    assert sum(p.numel() for p in twin.parameters()) == complexity.count(TINY, 16)["params"]
    twin.eval()
    with torch.no_grad():
        out = twin(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    ref = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(v, jnp.asarray(x)))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_pipeline_verdict():
    from input_pipeline import v100_images_per_s, verdict

    v = verdict(per_core=100.0, host_cores=4, model_ips=150.0, devices=8)
    assert v["model_needs_images_per_s"] == 1200 and v["pipeline_images_per_s"] == 400
    assert v["cores_needed"] == 12 and v["bottleneck"] == "input pipeline"
    assert verdict(per_core=100.0, host_cores=16, model_ips=150.0, devices=8)["bottleneck"] == "model"
    # RegNetY-400MF: 100 epochs of 1,281,167 images in 5.3 h on 8 V100s.
    assert v100_images_per_s("regnety_400mf") == pytest.approx(1_281_167 * 100 / (5.3 * 3600) / 8)


def test_pipeline_rows_beside_pytorch_and_their_reliability():
    """Medians over rounds, the ratio to PyTorch on the same cores (wall and per CPU-second), and a row unreliable
    when its load average (or its peer's) before it was above 0.5."""
    from input_pipeline import TORCH, format_table, summarize

    def run(loader, cores, wall, cpu, load):
        return dict(loader=loader, cores=cores, images_per_s=wall, images_per_cpu_s=cpu, load_before=load)

    runs = [run("device", 1, 100.0, 600.0, 0.2), run("device", 1, 120.0, 580.0, 0.3), run("device", 1, 110.0, 590.0, 0.1),
            run(TORCH, 1, 50.0, 300.0, 0.4), run("device", 2, 200.0, 590.0, 0.9), run(TORCH, 2, 100.0, 295.0, 0.3),
            run("host", 1, 90.0, 550.0, 0.2), run(TORCH, 3, 140.0, 290.0, 0.7), run("host", 3, 300.0, 560.0, 0.1)]  # fmt: skip
    rows = {(r["cores"], r["loader"]): r for r in summarize(runs, max_load=0.5)}
    one = rows[(1, "device")]
    assert (one["rounds"], one["images_per_s"], one["images_per_cpu_s"], one["load_before"]) == (3, 110.0, 590.0, 0.3)
    assert (
        one["x_torch_wall"] == pytest.approx(2.2) and one["x_torch_cpu"] == pytest.approx(590 / 300) and one["reliable"]
    )
    assert not rows[(2, "device")]["reliable"] and rows[(2, TORCH)]["reliable"]  # the 0.9 before the device row
    assert rows[(1, TORCH)]["x_torch_cpu"] == 1.0 and rows[(1, "host")]["reliable"]
    assert not rows[(3, "host")]["reliable"]  # its peer's load counts too: the ratio needs both
    table = format_table(list(rows.values()), 0.5)
    assert "| 1 | regnet_jax (device) | 0.30 | 110 | 590 | 2.20x | 1.97x | yes |" in table
    assert "| 2 | PyTorch DataLoader |" in table and "no: load > 0.5" in table


def test_generated_jpegs_are_imagenet_sized(tmp_path):
    from input_pipeline import write_jpegs
    from PIL import Image

    nbytes = write_jpegs(str(tmp_path), 3, (500, 375), num_classes=2)
    files = sorted(tmp_path.glob("train/*/*.jpg"))
    assert len(files) == 3 and {f.parent.name for f in files} == {"class0", "class1"}
    with Image.open(files[0]) as im:
        assert im.size == (500, 375) and im.format == "JPEG"
    assert nbytes == sum(f.stat().st_size for f in files) and nbytes / 3 > 20_000  # photo-like, not flat


def test_side_by_side_marks_busy_or_unsteady_runs_unreliable():
    from side_by_side import reliability

    steady = {
        "jax": [[1.0, 1.02]] * 5,
        "torch_channels_last": [[2.0, 2.1], [2.05, 2.0], [2.1, 2.1], [2.0, 2.0], [2.2, 2.1]],
    }
    assert reliability(steady, start_load=0.4, others_cores=0.1, cores=2) == []
    reasons = reliability(steady, start_load=1.5, others_cores=1.2, cores=2)
    assert "load average 1.50 before the measurements began, above half the 2 cores" in reasons[0]
    assert "other processes kept 1.20 of the 2 cores busy" in reasons[1] and len(reasons) == 2
    jumpy = dict(steady, torch_channels_last=[[2.0], [2.0], [2.6], [2.0], [2.0]])
    assert reliability(jumpy, 0.4, 0.1, 2) == ["torch_channels_last's round medians vary by 30% (> 20%)"]
    assert reliability({"jax": [[1.0]] * 3}, 0.4, 0.1, 2) == ["only 3 rounds (at least 5 needed)"]


def test_profile_step_attributes_hlo_ops_to_layer_kinds():
    from profile_step import jax_kind, op_metadata, parse_hlo, torch_conv_kind

    hlo = """HloModule m

%fused_computation (p0: f32[2,4,4,8], p1: f32[3,3,8,8]) -> f32[2,4,4,8] {
  %p0 = f32[2,4,4,8]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,8,8]{3,2,1,0} parameter(1)
  ROOT %conv.1 = f32[2,4,4,8]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(per_device)/transpose(jvp(AnyNet))/s1/b1/f/b/cond/branch_0_fun/conv_dgrad/conv_general_dilated"}
}

ENTRY %main (a: f32[2,4,4,8], b: f32[3,3,8,8]) -> f32[2,4,4,8] {
  %a = f32[2,4,4,8]{3,2,1,0} parameter(0)
  %b = f32[3,3,8,8]{3,2,1,0} parameter(1)
  %ynn_fusion.3 = f32[2,4,4,8]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation
  %wgrad = f32[8,3,3,8]{3,2,1,0} convolution(%a, %a), window={size=4x4}, dim_labels=f01b_i01o->01bf
  ROOT %add.2 = f32[2,4,4,8]{3,2,1,0} add(%ynn_fusion.3, %a), metadata={op_name="jit(per_device)/jvp(AnyNet)/s2/b3/f/c_bn/add"}
}
"""
    comps, entry = parse_hlo(hlo)
    assert entry == "main" and set(comps[entry]) == {"a", "b", "ynn_fusion.3", "wgrad", "add.2"}
    assert jax_kind(*op_metadata(comps, entry, "ynn_fusion.3")) == "3x3 conv input grad"
    assert jax_kind(*op_metadata(comps, entry, "wgrad")) == "3x3 conv weight grad"  # XLA dropped its metadata
    assert jax_kind(*op_metadata(comps, entry, "add.2")) == "BatchNorm fwd"
    assert (
        jax_kind("jit(per_device)/jvp(AnyNet)/stem/conv/cond/branch_0_fun/conv_general_dilated", "convolution", "")
        == "stem conv fwd"
    )
    assert jax_kind("jit(per_device)/transpose(jvp(AnyNet))/s1/b1/f/se/f_ex_0/dot_general", "dot", "") == "SE bwd"
    assert jax_kind("jit(per_device)/mul", "multiply", "") == "optimizer update"
    assert (
        torch_conv_kind([32, 48, 56, 56], [48, 8, 3, 3]) == "3x3 conv"
        and torch_conv_kind([32, 3, 224, 224], [32, 3, 3, 3]) == "stem conv"
    )
    assert (
        torch_conv_kind([32, 48, 1, 1], [12, 48, 1, 1]) == "SE"
        and torch_conv_kind([32, 48, 56, 56], [104, 48, 1, 1]) == "1x1 conv"
    )


def test_conv_layers_lists_every_distinct_conv_of_a_model():
    from conv_layers import model_layers, parse_layer

    layers = model_layers("regnety_400mf")
    assert layers[:3] == [(224, 3, 32, 3, 2, 1), (112, 32, 48, 1, 1, 1), (112, 48, 48, 3, 2, 6)]
    assert (
        (112, 32, 48, 1, 2, 1) in layers and (7, 440, 440, 3, 1, 55) in layers and len(set(layers)) == len(layers) == 20
    )
    assert parse_layer("28x104x104k3s1g13") == (28, 104, 104, 3, 1, 13)
    with pytest.raises(SystemExit, match="use HxC_INxC_OUTkKsSgG"):
        parse_layer("28x104")
