"""Figures: a run's training curves (curves.png), and saving any matplotlib figure through the path layer."""

from __future__ import annotations

import io

from regnet_jax.core import paths
from regnet_jax.training.records import EVAL_EMA_FILE, EVAL_FILE, TRAIN_FILE, read_jsonl

PLOT_FILE = "curves.png"


def plot_curves(workdir: paths.PathLike) -> paths.Path | None:
    """Write ``curves.png`` (train/eval loss and eval top-1/top-5 error per epoch); returns its path."""
    workdir = paths.resolve(workdir)
    train = read_jsonl(workdir / TRAIN_FILE)
    evals = read_jsonl(workdir / EVAL_FILE)
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax_loss.plot([r["epoch"] for r in train], [r["loss"] for r in train], label="train")
    if evals:
        ax_loss.plot([r["epoch"] for r in evals], [r["loss"] for r in evals], "o-", label="eval")
        ax_err.plot([r["epoch"] for r in evals], [r["top1_err"] for r in evals], "o-", label="top-1")
        ax_err.plot([r["epoch"] for r in evals], [r["top5_err"] for r in evals], "o-", label="top-5")
    ema = read_jsonl(workdir / EVAL_EMA_FILE)
    if ema:
        ax_err.plot([r["epoch"] for r in ema], [r["top1_err"] for r in ema], "s--", label="top-1 (EMA)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="evaluation error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(workdir.name)
    fig.tight_layout()
    path = workdir / PLOT_FILE
    save_figure(fig, path)
    plt.close(fig)
    return path


def save_figure(fig, path: paths.PathLike, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG through the path layer."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    paths.write_bytes(path, buf.getvalue())
