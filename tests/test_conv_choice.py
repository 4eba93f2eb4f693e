"""conv_impl='auto' follows the table regnet_jax/models/conv_choice.json (by platform and device kind), and the GPU
check's rule that writes it (benchmarks/gpu_check.py)."""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from regnet_jax.models import conv

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import gpu_check  # noqa: E402

H100 = "NVIDIA H100 80GB HBM3"


def test_the_shipped_table():
    """Today: CPU vjp (measured), GPU and TPU xla (unmeasured, and the file says so)."""
    table = conv.choice_table(conv.CHOICE_FILE)
    assert conv.auto_impl("cpu", "cpu", table) == "vjp"
    assert conv.auto_impl("gpu", H100, table) == "xla" and conv.auto_impl("tpu", "TPU v5 lite", table) == "xla"
    assert "unmeasured" in table["gpu"]["source"] and "unmeasured" in table["tpu"]["source"]


def test_auto_impl_lookup_order():
    table = {
        "gpu": {
            "default": "blocked",
            H100: {"default": "vjp", "images_per_s": {}},
            "NVIDIA A100-SXM4-40GB": "xla",
            "Odd": {"default": "cudnn"},
        },
        "tpu": {"default": "nonsense"},
    }
    assert conv.auto_impl("gpu", H100, table) == "vjp"  # the device kind's entry
    assert conv.auto_impl("gpu", "NVIDIA A100-SXM4-40GB", table) == "xla"  # a plain string there
    assert conv.auto_impl("gpu", "NVIDIA L4", table) == "blocked"  # else the platform's default
    assert conv.auto_impl("gpu", "Odd", table) == "blocked"  # a name that is no lowering is skipped
    assert conv.auto_impl("gpu", None, table) == "blocked"
    assert conv.auto_impl("tpu", "TPU v4", table) == "xla"  # else the built-in default, else xla
    assert conv.auto_impl("cpu", "cpu", table) == conv.CPU_DEFAULT == "vjp"
    assert conv.auto_impl("cpu", "cpu", {}) == "vjp" and conv.auto_impl("gpu", H100, {}) == "xla"


def test_missing_or_bad_table_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(conv, "CHOICE_FILE", str(tmp_path / "missing.json"))
    assert conv.choice_table(conv.CHOICE_FILE) == {} and conv.auto_impls()["cpu"] == "vjp"
    for i, text in enumerate(["{not json", "[1, 2]"]):
        bad = tmp_path / f"bad{i}.json"
        bad.write_text(text)
        monkeypatch.setattr(conv, "CHOICE_FILE", str(bad))
        with pytest.warns(UserWarning, match="unreadable"):
            assert conv.choice_table(conv.CHOICE_FILE) == {}
        assert conv.auto_impls() == {"cpu": "vjp", "gpu": "xla", "tpu": "xla"}


def test_auto_follows_the_table_on_another_backend(tmp_path, monkeypatch):
    """On a (monkeypatched) H100 the device kind's entry decides; other kinds get the platform default."""
    path = tmp_path / "choice.json"
    path.write_text(json.dumps({"gpu": {"default": "xla", H100: {"default": "vjp"}}}))
    monkeypatch.setattr(conv, "CHOICE_FILE", str(path))
    monkeypatch.setattr(conv.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(conv, "_device_kind", lambda backend: H100)
    assert conv.auto_impls() == {"cpu": "vjp", "gpu": "vjp", "tpu": "xla"}
    assert conv.resolved_impl("auto") == "vjp" and conv.resolved_impl("blocked") == "blocked"
    monkeypatch.setattr(conv, "_device_kind", lambda backend: "NVIDIA L4")
    assert conv.resolved_impl("auto") == "xla"


def test_auto_compiles_what_the_table_says(tmp_path, monkeypatch):
    """A table saying 'xla' for this CPU makes 'auto' emit XLA's grouped convolution instead of the vjp lowering."""
    x, k = jnp.ones((1, 8, 8, 16)), jnp.ones((3, 3, 8, 16))

    def compiled():
        f = jax.grad(lambda x, k: jnp.sum(conv.conv2d(x, k, 1, 2, impl="auto")), argnums=(0, 1))
        return jax.jit(f).lower(x, k).compile().as_text()

    path = tmp_path / "choice.json"
    path.write_text(json.dumps({"cpu": {"default": "vjp", jax.devices()[0].device_kind: {"default": "xla"}}}))
    monkeypatch.setattr(conv, "CHOICE_FILE", str(path))
    text = compiled()
    assert "feature_group_count=2" in text and "conv_dgrad" not in text


def test_gpu_check_rule():
    # Within the margin of xla's mean: xla; clearly faster on the mean: that lowering.
    assert (
        gpu_check.choose({"a": {"xla": 100, "vjp": 102, "blocked": 60}, "b": {"xla": 50, "vjp": 51, "blocked": 30}})[0]
        == "xla"
    )
    best, scores = gpu_check.choose(
        {"a": {"xla": 100, "vjp": 130, "blocked": 60}, "b": {"xla": 50, "vjp": 55, "blocked": 30}}
    )
    assert best == "vjp" and scores["vjp"] == pytest.approx(((1.0) * (1.0)) ** 0.5)
    # One model faster with each: the geometric mean of relative speeds decides.
    assert gpu_check.choose({"a": {"xla": 100, "vjp": 200}, "b": {"xla": 100, "vjp": 90}})[0] == "vjp"


def test_gpu_check_writes_the_table(tmp_path):
    path = str(tmp_path / "choice.json")
    entry = {"images_per_s": {"regnety_400mf": {"xla": 1.0, "vjp": 2.0}}, "date": "2026-12-06"}
    gpu_check.write_choice(path, "gpu", H100, "vjp", entry)  # starts from the shipped table
    table = conv.choice_table(path)
    assert table["cpu"]["default"] == "vjp" and table["gpu"]["default"] == "vjp" and table["gpu"][H100]["images_per_s"]
    assert conv.auto_impl("gpu", H100, table) == "vjp" and conv.auto_impl("gpu", "NVIDIA L4", table) == "vjp"
    assert "measured on NVIDIA H100" in table["gpu"]["source"]
