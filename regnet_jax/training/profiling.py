"""``config.profile_steps``: a jax.profiler trace of chosen training steps, written into the workdir.

With ``profile_steps = (100, 110)`` the trainer traces steps 100 to 109 (counted from 0, i.e. the steps that take the
run from 100 to 110 completed steps) into ``WORKDIR/plugins/profile/<time>/``, where TensorBoard's profile plugin
finds it (``tensorboard --logdir=WORKDIR``, with ``tensorboard-plugin-profile`` installed; or open the
``*.trace.json.gz`` in Perfetto). Each step is a ``StepTraceAnnotation`` so the plugin's step view separates them; on
XLA:CPU every HLO op or fusion is an event named after it (benchmarks/profile_step.py sums them per layer kind).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from absl import logging


class StepProfiler:
    """Runs train steps, tracing those in ``[start, end)`` (``end`` capped at ``last_step``) into ``logdir``."""

    def __init__(self, steps: Sequence[int], logdir: str, last_step: int):
        self.window = (int(steps[0]), min(int(steps[1]), last_step)) if steps else None  # checked by validate_config
        self.logdir = logdir
        self.active = False

    def run(self, step: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` as training step number ``step`` (the number of steps completed before it)."""
        if self.window is None or not self.window[0] <= step < self.window[1]:
            return fn(*args)
        if not self.active:
            logging.info("profiling steps %d to %d into %s", step, self.window[1] - 1, self.logdir)
            jax.profiler.start_trace(self.logdir)
            self.active = True
        try:
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                out = fn(*args)
            if step + 1 == self.window[1]:
                jax.block_until_ready(out)  # the trace must hold the last step's device work
                self.close()
        except BaseException:
            self.close()
            raise
        return out

    def close(self) -> None:
        """Stop and write the trace if one is running (also when training stops inside the window)."""
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
            logging.info("wrote the profile to %s (tensorboard --logdir=%s, Profile tab)", self.logdir, self.logdir)
