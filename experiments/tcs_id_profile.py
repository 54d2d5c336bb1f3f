"""Intrinsic-dimension profile of a trained GPT across layers and across training: the anchor of
the integration metrics against the literature (docs/tcs-v9.md).

    lhp tcs-id-profile [--run DIR | --ckpt A.ckpt B.ckpt ...] [--pool mean|last|token]
        [--points 2000] [--blocks 64] [--no-init] [--png docs/img/tcs_id_profile.png]
        [--out DIR] [--cache DIR] [--threads 1] [--quick]

(``python -m experiments.tcs_id_profile ...`` is the same.)

Published measurements (Ansuini et al. 2019 on CNNs; Valeriani et al. 2023 on transformers)
find the intrinsic dimension (ID) of representations far below the layer width, and rising then
falling across depth (a "hunchback"). This script measures it on the WikiText-2 GPT:

* checkpoints: every ``*.ckpt`` of ``<run>/checkpoints/id_profile/`` (written by
  ``experiment=gpt_wikitext2_id_profile``: one every 100 steps, all kept), in step order,
  plus step 0, a fresh initialisation of the same architecture (``torch.manual_seed(seed)``;
  ``--no-init`` leaves it out); ``--run`` defaults to the newest run of that experiment;
* text: the WikiText-2 *valid* split the checkpoint was trained beside (its stored
  ``data.wiki``), tokenized by the checkpoint's own tokenizer, one ``<eos>`` per line as in
  training, cut into non-overlapping windows of ``block_size`` tokens;
* points (``--pool``): ``mean`` (default, as Valeriani et al.: one point per sequence, its
  states averaged over positions) or ``last`` (the last position's state, as Cheng et al.
  2024 for LMs): one point per window, ``--points`` windows spread evenly over the split;
  ``token``: ``--points`` single token states drawn (seeded) from ``--blocks`` windows. Token
  points mix two scales (a frequent token in similar contexts gives near-duplicate states,
  different tokens are far apart), which TwoNN and the MLE read differently (at the embedding
  of the untrained GPT: 55 against 15, see the docs); the anchor uses sequence points, as the
  papers do. Position 0 is always left out
  (the first token attends only to itself: an outlier state); the same points for every
  checkpoint and layer;
* layers: the embedding output (``drop``: token + position embeddings) and each block's output
  (forward hooks, ``lit_models.hidden_states``);
* estimators: TwoNN (Facco et al. 2017, 10 % of the ratios discarded) and the Levina-Bickel MLE
  (k = 10..20), ``lit_models.topology.intrinsic``; for scale, ``pca90``: the number of principal
  components holding 90 % of the variance (a linear dimension).

Verdict, on the last checkpoint (TwoNN): "far below the width" when the largest ID over the
layers is <= 10 % of the width; "hunchback" when the largest ID is at an inner layer (not the
embedding, not the last block) and exceeds both ends by >= 10 %. The table, the verdict and the
figure (ID against depth, one line per checkpoint; ID against step, one line per layer) go to
``--out`` (``report.json``, ``profile.md``) and ``--png``; the headline is printed last.

``--cache DIR`` keeps each checkpoint's rows (keyed by file size, mtime and the settings), so the
profile can be run again as checkpoints arrive during training and only new ones are computed.

``--quick`` (the test suite runs it): trains ``experiment=gpt_wikitext2_id_profile_tiny`` (2
blocks x 64 dims, 10 steps, a checkpoint every 5) in a temporary directory and profiles it on
fewer points; the PNG goes to ``--out``, never to the docs.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from datamodules.corpora import wiki_lines
from datamodules.tokenizers import build_tokenizer
from experiments import REPO_ROOT
from experiments.bench import common
from experiments.utils import torch_threads
from lhp.errors import UserError, entry_point
from lit_models.checkpoints import load_net
from lit_models.hidden_states import block_names, capture
from lit_models.topology.intrinsic import clean_points, mle_dimension, twonn_dimension

DEFAULT_RUNS = "logs/train/gpt_wikitext2_id_profile/*/*/checkpoints/id_profile"
QUICK_EXPERIMENT = "gpt_wikitext2_id_profile_tiny"
FAR_BELOW = 0.10  # largest ID <= 10 % of the width
HUNCH_MARGIN = 1.10  # inner peak >= 10 % above both ends


def find_checkpoints(run: Path | None, ckpts: Sequence[Path]) -> list[Path]:
    """The checkpoints to profile, in training-step order."""
    if ckpts:
        missing = [str(p) for p in ckpts if not Path(p).is_file()]
        if missing:
            raise UserError(f"--ckpt: no such file(s) {missing}")
        return list(ckpts)
    if run is None:
        dirs = sorted(REPO_ROOT.glob(DEFAULT_RUNS), key=lambda p: p.stat().st_mtime)
        if not dirs:
            raise UserError(f"no checkpoints: train `python -m experiments.train "
                            f"experiment=gpt_wikitext2_id_profile` first, or pass --run / --ckpt "
                            f"(looked for {DEFAULT_RUNS})")
        folder = dirs[-1]
    else:
        folder = run / "checkpoints" / "id_profile" if (run / "checkpoints").is_dir() else run
    found = sorted(folder.glob("*.ckpt"), key=step_of)
    if not found:
        raise UserError(f"no *.ckpt in {folder} (expected the id_profile checkpoints of "
                        "experiment=gpt_wikitext2_id_profile)")
    return found


def step_of(path: Path) -> int:
    """The training step in a checkpoint's file name (``step000100.ckpt``), else -1."""
    match = re.search(r"step(\d+)", Path(path).name)
    return int(match.group(1)) if match else -1


def valid_windows(meta: dict, n_blocks: int, block_size: int) -> torch.Tensor:
    """(<= n_blocks, block_size) token ids: windows spread evenly over the valid split."""
    wiki = (meta.get("config", {}).get("data") or {}).get("wiki")
    if not isinstance(wiki, dict):
        raise UserError("the checkpoint's config has no data.wiki (WikiText) section: this "
                        "profile reads the WikiText valid split the model was trained beside")
    tokenizer = build_tokenizer(meta["tokenizer"], "checkpoint tokenizer")
    ids: list[int] = []
    for row in tokenizer.encode_batch(wiki_lines(wiki, "val")):
        ids.extend(row)
        ids.append(tokenizer.eos_id)
    n_windows = len(ids) // block_size
    if n_windows < 1:
        raise UserError(f"the valid split has {len(ids)} tokens, fewer than one window of "
                        f"{block_size}")
    starts = np.linspace(0, n_windows - 1, min(n_blocks, n_windows)).round().astype(int)
    tensor = torch.tensor(ids[: n_windows * block_size]).view(n_windows, block_size)
    return tensor[np.unique(starts)]


def layer_states(net: torch.nn.Module, windows: torch.Tensor, pool: str,
                 positions: torch.Tensor | None = None, batch: int = 32) -> dict[str, np.ndarray]:
    """(points, width) states per layer: ``embed`` (the embedding output) and each block;
    ``pool`` as in the module docstring (``token``: the flat ``positions``)."""
    blocks = block_names(net)
    names = ["drop", *blocks]
    labels = ["embed", *(f"block {i + 1}" for i in range(len(blocks)))]
    parts: dict[str, list[torch.Tensor]] = {label: [] for label in labels}
    net.eval()
    for chunk in windows.split(batch if pool != "token" else len(windows)):
        with torch.no_grad(), capture(net, names) as store:
            net(chunk)
        for label, name in zip(labels, names, strict=True):
            h = store[name][:, 1:]  # position 0 left out
            parts[label].append(h.mean(1) if pool == "mean" else h[:, -1] if pool == "last"
                                else h.reshape(-1, h.size(-1))[positions])
    return {label: torch.cat(p).double().numpy() for label, p in parts.items()}


def pca90(x: np.ndarray) -> int:
    """Principal components holding 90 % of the variance of ``x``."""
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(s) / s.sum(), 0.9) + 1)


def cache_file(cache: Path | None, path: Path | None, first: Path, settings: tuple) -> Path | None:
    """Where one checkpoint's rows are kept between runs: keyed by the file's name, size and
    mtime and the settings, so a rewritten checkpoint or other settings are recomputed."""
    if cache is None:
        return None
    stat = Path(path or first).stat()
    key = "-".join(map(str, (Path(path).stem if path else "init", stat.st_size,
                             stat.st_mtime_ns, *settings)))
    return cache / f"{key}.json"


def profile(checkpoints: Sequence[Path], points: int, n_blocks: int, init: bool, seed: int,
            pool: str = "mean", cache: Path | None = None) -> tuple[list[dict], int]:
    """One row per (checkpoint, layer): step, layer, twonn, mle, pca90; and the width.
    ``cache``: a folder of per-checkpoint results reused by later runs (checkpoints arrive
    one by one during training)."""
    rows: list[dict] = []
    windows = positions = None
    width = 0
    jobs: list[tuple[int, Path | None]] = [(step_of(p), p) for p in checkpoints]
    if init:
        jobs.insert(0, (0, None))
    for step, path in common.progress(jobs, "ID profile checkpoints"):
        kept = cache_file(cache, path, checkpoints[0], (pool, points, n_blocks, seed))
        if kept is not None and kept.is_file():
            done = json.loads(kept.read_text())
            rows += done["rows"]
            width = done["width"]
            continue
        net, meta = load_net(path or checkpoints[0], "tokens", "the ID profile")
        if path is None:  # step 0: a fresh initialisation of the same architecture
            torch.manual_seed(seed)
            net = type(net)(net.config)
        if windows is None:
            windows = valid_windows(meta, n_blocks if pool == "token" else points,
                                    net.config.block_size)
            flat = torch.arange(windows.numel() - len(windows))  # positions 1.. of each window
            gen = torch.Generator().manual_seed(seed)
            positions = flat[torch.randperm(len(flat), generator=gen)[:points]].sort()[0]
        new = []
        for layer, x in layer_states(net, windows, pool, positions).items():
            x = clean_points(x, f"hidden states of {path or 'init'} {layer}")
            width = x.shape[1]
            new.append({"step": step, "checkpoint": str(path) if path else "init",
                        "layer": layer, "twonn": twonn_dimension(x).dimension,
                        "mle": mle_dimension(x).dimension, "pca90": pca90(x),
                        "points": len(x)})
        rows += new
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps({"rows": new, "width": width}))
    return rows, width


def verdict(rows: list[dict], width: int, key: str = "twonn") -> dict:
    """Far below the width, and a hunchback, on the last checkpoint's profile (``key``)."""
    last = max(r["step"] for r in rows)
    ids = [r[key] for r in rows if r["step"] == last]
    peak = int(np.argmax(ids))
    inner = 0 < peak < len(ids) - 1
    hunch = inner and ids[peak] >= HUNCH_MARGIN * ids[0] and ids[peak] >= HUNCH_MARGIN * ids[-1]
    return {"step": last, "estimator": key, "profile": ids, "peak_layer": peak,
            "max_id": max(ids), "width": width, "max_id_fraction": max(ids) / width,
            "far_below_width": max(ids) <= FAR_BELOW * width, "hunchback": bool(hunch)}


def table(rows: list[dict]) -> str:
    """Markdown: one row per checkpoint, one column per layer, ``TwoNN / MLE`` (pca90)."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    steps = list(dict.fromkeys(r["step"] for r in rows))
    cell = {(r["step"], r["layer"]): r for r in rows}
    lines = ["| step | " + " | ".join(layers) + " |", "|---:|" + "---:|" * len(layers)]
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(
            f"{cell[step, la]['twonn']:.1f} / {cell[step, la]['mle']:.1f} ({cell[step, la]['pca90']})"
            for la in layers) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], width: int, png: Path) -> None:
    """ID against depth (one line per checkpoint) and against step (one line per layer)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = list(dict.fromkeys(r["layer"] for r in rows))
    steps = list(dict.fromkeys(r["step"] for r in rows))
    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    cmap = matplotlib.colormaps["viridis"]
    for i, step in enumerate(steps):
        color = cmap(i / max(len(steps) - 1, 1))
        for key, style in (("twonn", "-o"), ("mle", ":")):
            ys = [next(r[key] for r in rows if r["step"] == step and r["layer"] == la)
                  for la in layers]
            left.plot(range(len(layers)), ys, style, color=color, ms=3,
                      label=f"step {step}" if key == "twonn" else None)
    left.set(xticks=range(len(layers)), xlabel="layer", ylabel="intrinsic dimension",
             title=f"ID across depth (TwoNN solid, MLE dotted; width {width})")
    left.set_xticklabels(layers, rotation=30, fontsize=8)
    left.legend(fontsize=7)
    for j, layer in enumerate(layers):
        ys = [next(r["twonn"] for r in rows if r["step"] == s and r["layer"] == layer)
              for s in steps]
        right.plot(steps, ys, "-o", ms=3, color=matplotlib.colormaps["plasma"](j / len(layers)),
                   label=layer)
    right.set(xlabel="training step", ylabel="TwoNN intrinsic dimension",
              title="ID across training, per layer")
    right.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)


def headline(v: dict, mle: dict) -> str:
    far = "far below" if v["far_below_width"] else "NOT far below"
    hunch = "yes" if v["hunchback"] else "no"
    return (f"step {v['step']}: TwoNN ID across depth "
            f"{' '.join(f'{x:.1f}' for x in v['profile'])} (MLE "
            f"{' '.join(f'{x:.1f}' for x in mle['profile'])}); max {v['max_id']:.1f} = "
            f"{100 * v['max_id_fraction']:.1f}% of width {v['width']} -> {far} the width; "
            f"rises then falls (hunchback): {hunch} (MLE: {'yes' if mle['hunchback'] else 'no'})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None,
                   help="run directory (or its checkpoints/id_profile); default: the newest run "
                        "of experiment=gpt_wikitext2_id_profile")
    p.add_argument("--ckpt", type=Path, nargs="+", default=[], help="explicit checkpoints")
    p.add_argument("--pool", choices=("mean", "last", "token"), default="mean",
                   help="a point per window (mean or last state) or per token")
    p.add_argument("--points", type=int, default=2000,
                   help="points per layer (windows; tokens for --pool token)")
    p.add_argument("--blocks", type=int, default=64, help="windows to draw tokens from "
                   "(--pool token)")
    p.add_argument("--no-init", dest="init", action="store_false",
                   help="leave out step 0 (a fresh initialisation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--png", type=Path, default=None, help="figure (default: <out>/id_profile.png)")
    p.add_argument("--out", type=Path, default=None, help="output directory "
                   "(default: logs/bench/tcs_id_profile_<time>)")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder of per-checkpoint results to reuse (profile during training)")
    p.add_argument("--quick", action="store_true", help="train and profile a tiny model (CI)")
    args = p.parse_args(argv)
    for key in ("points", "blocks", "threads"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1")
    if args.points < 21:
        p.error("--points must be >= 21 (the MLE uses 20 neighbours)")
    return args


def train_quick(tmp: Path) -> Path:
    """Train the tiny twin; its id_profile checkpoint folder."""
    run_dir = tmp / "run"
    common.train_run([f"experiment={QUICK_EXPERIMENT}", "logger=csv", "test=false",
                      "extras.print_config=false", f"paths.log_dir={tmp}/logs"], run_dir)
    return run_dir / "checkpoints" / "id_profile"


@entry_point
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            args.run = train_quick(Path(tmp))
            args.points, args.blocks = min(args.points, 300), min(args.blocks, 16)
        return run(args)


def run(args: argparse.Namespace) -> dict:
    out = common.out_dir(args.out, "tcs_id_profile")
    png = args.png or out / "id_profile.png"
    checkpoints = find_checkpoints(args.run, args.ckpt)
    rows, width = profile(checkpoints, args.points, args.blocks, args.init, args.seed,
                          args.pool, args.cache)
    v, v_mle = verdict(rows, width), verdict(rows, width, "mle")
    text = table(rows)
    plot(rows, width, png)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.md").write_text(text + "\n")
    report = {"rows": rows, "width": width, "pool": args.pool, "verdict": v, "verdict_mle": v_mle,
              "checkpoints": [str(p) for p in checkpoints], "png": str(png),
              "headline": headline(v, v_mle)}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n" + text + "\n")
    print(f"cells: TwoNN / MLE (pca90) on {rows[0]['points']} points per layer "
          f"(pool {args.pool}); "
          f"figure {png}; report {out / 'report.json'}")
    print(report["headline"], flush=True)
    return report


if __name__ == "__main__":
    main()
