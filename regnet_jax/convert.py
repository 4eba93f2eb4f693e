"""Convert pycls, torchvision or timm (PyTorch) weights into a weights directory (``regnet_jax.weights.layouts``).

    python -m regnet_jax.convert --from=pycls|torchvision|timm --checkpoint=FILE [--config=CONFIG] --output=DIR

pycls weights need the ``--config`` of the model they were trained as; torchvision and timm RegNets are read from the
shapes of the weights without one. Reading ``.pth``/``.pyth`` files needs PyTorch (``pip install 'regnet_jax[torch]'``);
``.safetensors`` and ``.npz`` state dicts do not.
"""

from __future__ import annotations

import sys
import time

from absl import flags

from regnet_jax.config import ConfigError, define_config_flag
from regnet_jax.core.cli import run
from regnet_jax.weights.layouts import LAYOUTS, convert_file


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_enum(
        "from",
        None,
        list(LAYOUTS),
        "Layout of the checkpoint: pycls (.pyth), torchvision or timm.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "checkpoint", None, "A .pyth/.pth/.pt (needs torch), .safetensors or .npz file.", flag_values=flag_values
    )
    define_config_flag(
        "config", "Config whose model the weights are for, e.g. configs/regnety_400mf.py. Required for pycls; "
        "for torchvision/timm, omit it to read the architecture from the weights.", lock=False, flag_values=flag_values,
    )  # fmt: skip
    flags.DEFINE_string("output", None, "Weights directory to create (must not exist).", flag_values=flag_values)
    flags.DEFINE_enum("channel_order", "", ["", "rgb", "bgr"], "Override the input channel order (default: bgr for pycls, "
                      "rgb otherwise).", flag_values=flag_values)  # fmt: skip
    flags.DEFINE_bool("unsafe_pickle", False, "Allow torch checkpoints that pickle arbitrary Python objects (trusted files "
                      "only).", flag_values=flag_values)  # fmt: skip
    flags.mark_flag_as_required("from", flag_values=flag_values)


def main(argv: list[str]) -> None:
    del argv
    FLAGS = flags.FLAGS
    if not FLAGS.checkpoint or not FLAGS.output:
        raise ConfigError("--checkpoint and --output are required (and --config for --from=pycls)")
    layout = getattr(FLAGS, "from")
    t = time.perf_counter()
    out = convert_file(
        layout,
        FLAGS.checkpoint,
        FLAGS.config,
        FLAGS.output,
        channel_order=FLAGS.channel_order,
        unsafe_pickle=FLAGS.unsafe_pickle,
    )
    if out["note"]:
        print(f"note: {out['note']}")
    print(
        f"converted {out['tensors']} tensors ({out['params']:,} parameters) of {layout} {FLAGS.checkpoint} "
        f"in {time.perf_counter() - t:.1f} s -> {out['output']} (input: {out['input']['channel_order'].upper()}, "
        "ImageNet mean/std)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    run(main, define_flags)
