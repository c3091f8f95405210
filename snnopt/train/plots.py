"""PNG plots of a training run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_figures(history: list[dict]) -> dict:
    """``{file name: matplotlib Figure}``: ``loss.png`` / ``accuracy.png`` (per epoch, train
    and test), ``spike_rate.png`` (mean spikes per neuron and step, per layer) and, when
    recorded, ``active_fraction.png`` (sparse mode: fraction of neuron states inside the
    gradient band, per layer).  The epoch axis has whole-number ticks only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]

    def figure(title, ylabel, series):
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        for label, values in series.items():
            ax.plot(epochs, values, marker="o", label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize="small")
        fig.tight_layout()
        return fig

    figures = {
        "loss.png": figure("loss", "cross-entropy", {"train": [h["train_loss"] for h in history],
                                                     "test": [h["test_loss"] for h in history]}),
        "accuracy.png": figure("accuracy", "accuracy", {"train": [h["train_acc"] for h in history],
                                                        "test": [h["test_acc"] for h in history]}),
    }
    for key, name, title in (("spike_rate", "spike_rate.png", "spike rate per layer"),
                             ("active_fraction", "active_fraction.png", "active fraction per layer (sparse)")):
        layers = sorted({k for h in history for k in h.get(key, {})})
        if layers:
            figures[name] = figure(title, key.replace("_", " "),
                                   {layer: [h.get(key, {}).get(layer, float("nan")) for h in history]
                                    for layer in layers})
    return figures


def write_plots(history: list[dict], out: Path) -> list[Path]:
    """Write the figures of :func:`plot_figures` as PNG files in ``out``; returns their paths."""
    figures = plot_figures(history)
    import matplotlib.pyplot as plt

    written = []
    for name, fig in figures.items():
        path = Path(out) / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
