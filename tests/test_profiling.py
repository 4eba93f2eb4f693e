"""config.profile_steps: the trainer's StepProfiler writes a jax.profiler trace of exactly the chosen steps where
TensorBoard's profile plugin looks (LOGDIR/plugins/profile/<run>/), stops when training stops inside the window, and
bad windows are refused with a message naming the field."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest
from helpers_train import tiny_config

from regnet_jax.config import ConfigError, validate_config
from regnet_jax.training.profiling import StepProfiler


def _traced_steps(logdir: str) -> list[int]:
    files = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    assert len(files) == 1, files
    steps = []
    for plane in jax.profiler.ProfileData.from_file(files[0]).planes:
        for line in plane.lines:
            steps += [int(dict(e.stats)["step_num"]) for e in line.events if e.name == "train" and e.stats]
    return sorted(steps)


def _train(profiler: StepProfiler, steps: int, fail_at: int = -1) -> None:
    step_fn = jax.jit(lambda s: (s + 1.0, {"loss": jnp.sum(s)}))
    state = jnp.zeros(4)
    for step in range(steps):
        if step == fail_at:
            profiler.run(step, lambda s: 1 / 0, state)
        state, _ = profiler.run(step, step_fn, state)


@pytest.mark.parametrize("window, steps, traced", [((2, 5), 8, [2, 3, 4]), ((3, 10), 5, [3, 4])])
def test_profile_window_traces_exactly_those_steps(tmp_path, window, steps, traced):
    profiler = StepProfiler(window, str(tmp_path), last_step=steps)
    _train(profiler, steps)
    assert not profiler.active and _traced_steps(str(tmp_path)) == traced


def test_no_window_traces_nothing(tmp_path):
    _train(StepProfiler((), str(tmp_path), last_step=4), 4)
    assert not os.path.exists(tmp_path / "plugins")


def test_a_failing_step_inside_the_window_still_writes_the_trace(tmp_path):
    profiler = StepProfiler((1, 6), str(tmp_path), last_step=10)
    with pytest.raises(ZeroDivisionError):
        _train(profiler, 10, fail_at=3)
    assert not profiler.active and _traced_steps(str(tmp_path)) == [1, 2, 3]  # step 3 started, then failed


def test_profile_steps_is_a_config_field():
    assert tuple(tiny_config().profile_steps) == ()
    validate_config(tiny_config(profile_steps=(100, 110)))


@pytest.mark.parametrize("steps", [(3, 3), (5, 2), (-1, 4), (1, 2, 3), (1.5, 4)])
def test_bad_profile_steps_are_refused(steps):
    with pytest.raises(
        ConfigError, match=r"config.profile_steps=.* is invalid: must be \(\) \(off\) or \(start, end\)"
    ):
        validate_config(tiny_config(profile_steps=steps))
