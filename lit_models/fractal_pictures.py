"""Hidden-state pictures of a fractal decoder (PNG, matplotlib Agg).

- ``trajectory.png``: the states ``h_0 .. h_T`` of every character of a passage, projected
  to 2-D by PCA (fitted on all of them), one line per character from ``h_0`` (small dot) to
  ``h_T`` (coloured by correct / wrong reconstruction); points coloured by iteration.
- ``accuracy_along_book.png``: reconstruction accuracy in windows along the whole book.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import torch

from datamodules.book_coords import positions
from lit_models.archs.fractal import FractalDecoder

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@torch.no_grad()
def passage_states(net: FractalDecoder, n_chars: int, start: int, length: int,
                   book_index: int | None = 0, z: torch.Tensor | None = None) -> torch.Tensor:
    """States of positions ``start .. start+length-1``: (T+1, length, n_embd)."""
    device = next(net.parameters()).device
    x = positions(n_chars)[start:start + length].to(device)
    book = None if book_index is None or z is not None else torch.full_like(x, book_index, dtype=torch.long)
    return torch.stack(net.states(x, book, z=z)).float().cpu()


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """Project (n, d) points onto their two leading principal components (exact SVD)."""
    centered = points - points.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centered.double(), full_matrices=False)
    return (centered.double() @ v[:2].T).float()


def plot_trajectory(states: torch.Tensor, correct: torch.Tensor, path: Path, title: str) -> Path:
    steps, n, _ = states.shape
    xy = pca_2d(states.reshape(steps * n, -1)).reshape(steps, n, 2)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    for i in range(n):
        ax.plot(xy[:, i, 0], xy[:, i, 1], color="0.75", lw=0.5, zorder=1)
    cmap = plt.get_cmap("viridis")
    for t in range(steps - 1):
        ax.scatter(xy[t, :, 0], xy[t, :, 1], s=6, color=cmap(t / max(steps - 1, 1)), zorder=2,
                   label=f"h_{t}" if t in (0, steps - 2) else None)
    ok = correct.bool()
    ax.scatter(xy[-1, ok, 0], xy[-1, ok, 1], s=14, color="tab:green", zorder=3, label=f"h_{steps - 1} correct")
    ax.scatter(xy[-1, ~ok, 0], xy[-1, ~ok, 1], s=18, color="tab:red", marker="x", zorder=3,
               label=f"h_{steps - 1} wrong")
    ax.set(title=title, xlabel="PC 1", ylabel="PC 2")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_accuracy(correct: torch.Tensor, path: Path, title: str, bins: int = 200) -> Path:
    n = correct.numel()
    bins = max(1, min(bins, n))
    edges = torch.linspace(0, n, bins + 1).long()
    acc = [correct[a:b].float().mean().item() for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
    centers = [(a + b) / 2 / n for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=110)
    ax.plot(centers, acc, lw=1)
    ax.set(title=f"{title}: accuracy {correct.float().mean().item():.4f} "
                 f"({int(n - correct.sum())} wrong of {n})",
           xlabel="position in the book (x)", ylabel=f"accuracy ({n // bins} chars/bin)",
           ylim=(-0.02, 1.02))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_pictures(net: FractalDecoder, ids: torch.Tensor, out_dir: str | Path, *,
                  book_index: int | None = 0, z: torch.Tensor | None = None, passage: int = 200,
                  title: str = "book", charset: Sequence[str] | None = None) -> dict[str, Path]:
    """Both pictures for one book; returns ``{name: path}``."""
    from lit_models.atlas import evaluate_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = net.training
    net.eval()
    try:
        result = evaluate_text(net, ids, book_index=None if z is not None else book_index, z=z)
        n = len(ids)
        length = min(passage, n)
        start = max(0, n // 2 - length // 2)
        states = passage_states(net, n, start, length, book_index, z)
    finally:
        net.train(was_training)
    snippet = ""
    if charset is not None:
        table = ["?", *charset]
        snippet = "".join(table[i] for i in ids[start:start + 24].tolist()).replace("\n", " ")
    paths = {
        "trajectory": plot_trajectory(
            states, result["correct"][start:start + length], out_dir / "trajectory.png",
            f"{title}: h_t over T={states.shape[0] - 1} iterations, chars {start}..{start + length - 1}"
            + (f"\n“{snippet}…”" if snippet else "")),
        "accuracy_along_book": plot_accuracy(result["correct"], out_dir / "accuracy_along_book.png", title),
    }
    return paths
