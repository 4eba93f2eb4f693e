"""Export trained or converted weights as one portable file, with the config beside it (``regnet_jax.weights.exporting``).

    python -m regnet_jax.export --checkpoint=DIR --output=regnety_400mf.safetensors [--layout=flax|pycls|torchvision|timm] [--ema]
    python -m regnet_jax.export --checkpoint=DIR --output=regnety_400mf.msgpack

``--checkpoint`` is a weights directory (``python -m regnet_jax.convert``) or a training workdir (its newest good
checkpoint). Writes FILE (.safetensors: Flax or PyTorch tensor names and shapes; .msgpack: the Flax variable tree) and
FILE.json beside it (the ``config.model`` to build and the input conventions); neither may exist already.
"""

from __future__ import annotations

import sys
import time

from absl import flags

from regnet_jax.core import paths
from regnet_jax.core.cli import run
from regnet_jax.weights.exporting import EXPORT_LAYOUTS, ExportError, export_variables
from regnet_jax.weights.pretrained import load_pretrained


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("checkpoint", None, "A weights directory or a training workdir.", flag_values=flag_values)
    flags.DEFINE_string("output", None, "File to write: NAME.safetensors or NAME.msgpack (its config, NAME.safetensors.json "
                        "or NAME.msgpack.json, beside it).", flag_values=flag_values)  # fmt: skip
    flags.DEFINE_enum("layout", "flax", list(EXPORT_LAYOUTS), "Tensor names and shapes: Flax, or a PyTorch state dict of "
                      "pycls/torchvision/timm.", flag_values=flag_values)  # fmt: skip
    flags.DEFINE_bool("ema", False, "Export the EMA weights of a training workdir.", flag_values=flag_values)


def main(argv: list[str]) -> None:
    del argv
    FLAGS = flags.FLAGS
    if not FLAGS.checkpoint or not FLAGS.output:
        raise ExportError("--checkpoint and --output are both required")
    t = time.perf_counter()
    pretrained = load_pretrained(FLAGS.checkpoint, ema=FLAGS.ema)
    out, sidecar = export_variables(
        pretrained.variables,
        pretrained.model,
        pretrained.input,
        FLAGS.output,
        layout=FLAGS.layout,
        source=pretrained.source,
    )
    size = paths.resolve(out).stat().length / 2**20
    print(
        f"exported {pretrained.source} ({FLAGS.layout} layout, {size:.1f} MiB) in {time.perf_counter() - t:.1f} s -> {out} + {sidecar}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    run(main, define_flags)
