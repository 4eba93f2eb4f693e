"""Model summary: per-stage widths, depths, group widths, bottleneck and SE widths, the per-block width curve.

python -m regnet_jax.models --config=configs/regnety_4gf.py [--plot=widths.png]
"""

from __future__ import annotations

from absl import flags

from regnet_jax.config import config_path, define_config_flag
from regnet_jax.core.cli import run
from regnet_jax.models.complexity import count
from regnet_jax.models.regnet import generate_regnet
from regnet_jax.models.spec import ModelSpec, model_spec


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    define_config_flag("config", "A config file, e.g. configs/regnety_4gf.py.", flag_values=flag_values)
    flags.DEFINE_string("plot", "", "Also save the per-block width curve as this PNG.", flag_values=flag_values)
    flags.mark_flag_as_required("config", flag_values=flag_values)


def summary(spec: ModelSpec, resolution: int = 224) -> str:
    """A human-readable table of the resolved architecture and its complexity."""
    blocks = spec.blocks()
    lines = [
        f"stem {spec.stem_type} w={spec.stem_w}; block {spec.block_type}; se_ratio {spec.se_ratio}; "
        f"activation {spec.activation}; {spec.num_classes} classes",
        f"{'stage':>5} {'depth':>5} {'width':>6} {'stride':>6} {'group_w':>7} {'groups':>6} {'bot_mul':>7} {'w_b':>6} {'w_se':>10}",
    ]
    for i in range(spec.num_stages):
        stage = [b for b in blocks if b["stage"] == i + 1]
        w_se = sorted({b["w_se"] for b in stage})
        lines.append(
            f"{f's{i + 1}':>5} {spec.depths[i]:>5} {spec.widths[i]:>6} {spec.strides[i]:>6} {spec.group_ws[i]:>7} "
            f"{stage[0]['groups']:>6} {spec.bot_muls[i]:>7g} {stage[0]['w_b']:>6} {'/'.join(map(str, w_se)):>10}"
        )
    lines.append("per-block widths: " + " ".join(str(b["w_out"]) for b in blocks))
    counts = count(spec, resolution)
    lines.append(
        f"params {counts['params']:,}  flops {counts['flops']:,} (mult-adds at {resolution} px)  acts {counts['acts']:,}"
    )
    return "\n".join(lines)


def plot_widths(spec: ModelSpec, model_cfg, path: str) -> None:
    """Per-block width curve (and, for RegNets, the continuous linear widths u_j) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [b["w_out"] for b in spec.blocks()]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(range(len(widths)), widths, where="post", label="per-block width")
    if model_cfg.type == "regnet":
        rule = generate_regnet(model_cfg.depth, model_cfg.w0, model_cfg.wa, model_cfg.wm)
        ax.plot(range(len(rule.continuous)), rule.continuous, "--", label="u_j = w0 + wa*j")
    ax.set_xlabel("block index j")
    ax.set_ylabel("width")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> None:
    del argv
    FLAGS = flags.FLAGS
    config = FLAGS.config
    spec = model_spec(config.model)
    print(config_path(FLAGS))
    print(summary(spec, config.resolution))
    if FLAGS.plot:
        plot_widths(spec, config.model, FLAGS.plot)
        print(f"width curve written to {FLAGS.plot}")


if __name__ == "__main__":
    run(main, define_flags)
