"""regnet_jax: RegNet and AnyNet ("Designing Network Design Spaces", Radosavovic et al., CVPR 2020) in JAX/Flax.

The folder tree is the architecture (docs/architecture.md): the commands on top (``python -m regnet_jax.train``,
``evaluate``, ``predict``, ``convert``, ``export``, ``sweep``, ``complexity``, ``benchmark``, and ``python -m
regnet_jax.models``), each a thin command line over the library packages ``core``, ``config``, ``models``, ``data``,
``training``, ``weights``, ``design_space`` and ``benchmarking``. The public API: ``regnet_jax.models.create_model``,
``regnet_jax.models.list_models``, ``regnet_jax.train.train_and_evaluate``.
"""

from regnet_jax.core import interrupts as _interrupts
from regnet_jax.core import logs as _logs

__version__ = "0.2.0"

if _logs.started_as_tool():  # python -m regnet_jax.<tool>: before the tool imports TensorFlow or JAX
    _logs.quiet_tool()
    _interrupts.set_handler(
        _interrupts.on_interrupt_while_starting
    )  # Ctrl-C while importing: one line, not a traceback
