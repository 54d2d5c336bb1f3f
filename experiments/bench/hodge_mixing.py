"""Is the Hodge Laplacian mixing time a proxy for persistence? Spearman rank correlation across
point clouds of known topology and LM hidden states, with a scatter PNG; the figure is last.

    lhp bench hodge_mixing [--quick] [--ckpt CKPT] [--points 80] [--seeds 10] [--out DIR]

Clouds (``--points`` each): noisy circles, two circles, tori and spheres in R^3, 2-5 Gaussian
clusters, uniform noise in the square and the cube (``--seeds`` of each, noise and sizes varied
with the seed), and hidden states of the trained LM ``--ckpt`` (windows of consecutive tokens
of ``tests/fixtures/wikitext_tiny/valid.txt``, every block; skipped with a note when no
checkpoint is given or found). Every cloud is centred and scaled to unit RMS radius; the scale
ε is its 10th percentile of pairwise distances (scale-free across families).

Per cloud: the Rips complex at ε (up to triangles), ``L_0`` and ``L_1``; spectral gap = their
smallest non-zero eigenvalue, mixing time = ln(100) / gap (also for the up part
``B_2 B_2^T`` of L_1 alone: by the Hodge decomposition the non-zero spectrum of L_1 is that of
L_0 together with that of its up part, so gap(L_1) = min(gap(L_0), gap(up))) (the heat flow's non-harmonic part
shrinking 100-fold); total persistence of H0 and H1 (sum of finite lifetimes, Rips, ripser).
Spearman rho (scipy.stats.spearmanr) between mixing time and total persistence, per dimension.
Mixing time is a decreasing function of the gap, so the rho with the gap is the same number
with the opposite sign. Control: the triangle count at ε against total persistence H1. Verdict: a proxy when |rho| >= 0.7 with p < 0.01.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from experiments import REPO_ROOT
from experiments.bench import common
from lhp.errors import UserError, entry_point
from lit_models.topology import compute_persistence, total_persistence
from lit_models.topology.hodge import hodge_laplacian, rips_complex
from lit_models.topology.quantum_walk import mixing_time

SCALE_QUANTILE = 10
PROXY_RHO, PROXY_P = 0.7, 0.01
TEXT = REPO_ROOT / "tests" / "fixtures" / "wikitext_tiny" / "valid.txt"
LM_CANDIDATES = ("/tmp/wt2tiny/checkpoints/last.ckpt",)
PAIRS = (("mix0", "tp0", "mixing time L_0 vs total persistence H0"),
         ("mix1", "tp1", "mixing time L_1 vs total persistence H1"),
         ("mix1up", "tp1", "mixing time L_1 up-part vs total persistence H1"),
         ("triangles", "tp1", "control: triangle count at ε vs total persistence H1"))


def circle(n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    t = rng.uniform(0, 2 * math.pi, n)
    return np.c_[np.cos(t), np.sin(t)] + noise * rng.normal(size=(n, 2))


def synthetic_clouds(n: int, seeds: int) -> list[tuple[str, np.ndarray]]:
    """(family, cloud) pairs; sizes, noise and cluster counts vary with the seed."""
    out = []
    for s in range(seeds):
        rng = np.random.default_rng(s)
        noise = 0.02 + 0.04 * s
        out.append(("circle", circle(n, rng, noise)))
        two = np.r_[circle(n // 2, rng, noise), circle(n - n // 2, rng, noise) + [3.0, 0.0]]
        out.append(("two circles", two))
        u, v = rng.uniform(0, 2 * math.pi, size=(2, n))
        small = 0.5 + 0.1 * s
        out.append(("torus", np.c_[(2 + small * np.cos(v)) * np.cos(u),
                                   (2 + small * np.cos(v)) * np.sin(u), small * np.sin(v)]
                    + noise * rng.normal(size=(n, 3))))
        sphere = rng.normal(size=(n, 3))
        out.append(("sphere", sphere / np.linalg.norm(sphere, axis=1, keepdims=True)
                    + noise * rng.normal(size=(n, 3))))
        k = 2 + s % 4
        centers = 4.0 * rng.normal(size=(k, 3))
        out.append(("clusters", centers[rng.integers(k, size=n)] + rng.normal(size=(n, 3))))
        out.append(("noise", rng.uniform(size=(n, 2 + s % 2))))
    return out


def lm_clouds(ckpt: Path, n: int, windows: int) -> list[tuple[str, np.ndarray]]:
    """Hidden states of every block of the checkpoint's LM, ``windows`` windows of ``n``
    consecutive tokens each (``StatefulEmbedder``, i.e. ``lit_models.hidden_states``)."""
    from lit_models.embedder import StatefulEmbedder
    from lit_models.hidden_states import block_names

    text = TEXT.read_text(encoding="utf-8")
    probe = StatefulEmbedder.from_checkpoint(ckpt)
    out = []
    for layer in range(len(block_names(probe.net))):
        emb = StatefulEmbedder.from_checkpoint(ckpt, layer=layer)
        hidden = np.concatenate([emb.feed(text).hidden.numpy(), emb.flush().hidden.numpy()])
        for w in range(min(windows, len(hidden) // n)):
            out.append((f"LM block {layer}", hidden[w * n:(w + 1) * n].astype(np.float64)))
    return out


def measure(x: np.ndarray) -> dict[str, float]:
    """Mixing times of L_0, L_1 at the 10th-percentile scale; total persistence H0, H1."""
    x = x - x.mean(0)
    x = x / math.sqrt((x ** 2).sum(1).mean())
    scale = float(np.percentile(pdist(x), SCALE_QUANTILE))
    cx = rips_complex(x, scale, max_dim=2)
    dgm = compute_persistence(x, max_dim=1, method="ripser")
    return {"edges": cx.count(1), "triangles": cx.count(2),
            "mix0": mixing_time(hodge_laplacian(cx, 0)), "mix1": mixing_time(hodge_laplacian(cx, 1)),
            "mix1up": mixing_time(hodge_laplacian(cx, 1, part="up")),
            "tp0": total_persistence(dgm, 0), "tp1": total_persistence(dgm, 1)}


def rank_correlation(rows: list[dict], a: str, b: str) -> tuple[float, float, int]:
    """Spearman (rho, p, n) of keys ``a`` and ``b`` over rows where both are finite."""
    pairs = [(r[a], r[b]) for r in rows if math.isfinite(r[a]) and math.isfinite(r[b])]
    if len(pairs) < 3:
        return math.nan, math.nan, len(pairs)
    rho, p = spearmanr(*zip(*pairs, strict=True))
    return float(rho), float(p), len(pairs)


def correlations(rows: list[dict], subset: str) -> list[dict]:
    out = []
    for mix, tp, name in PAIRS:
        rho, p, n = rank_correlation(rows, mix, tp)
        proxy = abs(rho) >= PROXY_RHO and p < PROXY_P
        out.append({"pair": name, "set": subset,
                    "n": n, "rho": rho, "p": p,
                    "verdict": "proxy" if proxy else "not a proxy"})
    return out


def scatter(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    families = sorted({r["family"] for r in rows})
    cmap = plt.get_cmap("tab10")
    for ax, dim in zip(axes, (0, 1), strict=True):
        for i, fam in enumerate(families):
            pts = [(r[f"mix{dim}"], r[f"tp{dim}"]) for r in rows
                   if r["family"] == fam and math.isfinite(r[f"mix{dim}"])]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=18, color=cmap(i % 10), label=fam)
        ax.set_xscale("log")
        ax.set_xlabel(f"mixing time of L_{dim} (ln 100 / spectral gap)")
        ax.set_ylabel(f"total persistence H{dim}")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("Hodge Laplacian mixing time vs total persistence (one point per cloud)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def find_checkpoint(given: Path | None) -> Path | None:
    if given is not None:
        if not given.is_file():
            raise UserError(f"--ckpt {given}: no such file")
        return given
    return next((Path(c) for c in LM_CANDIDATES if Path(c).is_file()), None)


@entry_point
def main(argv: list[str] | None = None) -> float:
    p = common.bench_parser(__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few small clouds: a smoke run")
    p.add_argument("--ckpt", type=Path, default=None,
                   help=f"trained LM checkpoint (default: {', '.join(LM_CANDIDATES)} if present)")
    p.add_argument("--points", type=int, default=80)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--windows", type=int, default=4, help="LM windows per block")
    p.add_argument("--png", type=Path, default=None, help="scatter plot (default: in the out dir)")
    args = common.parse_args(p, argv)
    n, seeds = (40, 2) if args.quick else (args.points, args.seeds)
    clouds = synthetic_clouds(n, seeds)
    ckpt = find_checkpoint(args.ckpt)
    notes = []
    if ckpt is None:
        notes.append("no LM checkpoint: LM hidden states skipped (pass --ckpt)")
    else:
        clouds += lm_clouds(ckpt, n, 1 if args.quick else args.windows)
        notes.append(f"LM hidden states from {ckpt}")
    rows = [{"family": fam, **measure(x)} for fam, x in common.progress(clouds, "clouds")]
    png = args.png or common.out_dir(args.out, "hodge_mixing") / "tcs_v9_mixing.png"
    scatter(rows, png)
    corr = correlations(rows, "all") + correlations(
        [r for r in rows if not r["family"].startswith("LM")], "synthetic only")
    by_family = {}
    for r in rows:
        by_family.setdefault(r["family"], []).append(r)
    fam_rows = [{"family": f, "clouds": len(rs),
                 **{k: float(np.median([r[k] for r in rs])) for k in ("mix0", "mix1", "tp0", "tp1")},
                 "rho0": rank_correlation(rs, "mix0", "tp0")[0],
                 "rho1": rank_correlation(rs, "mix1up", "tp1")[0]}
                for f, rs in by_family.items()]
    print("\n" + common.table(fam_rows, [
        ("family", "family", ""), ("clouds", "clouds", "d"), ("mix0", "median mix L_0", ".1f"),
        ("mix1", "median mix L_1", ".1f"), ("tp0", "median TP H0", ".2f"),
        ("tp1", "median TP H1", ".3f"), ("rho0", "rho L_0/H0 within", "+.2f"),
        ("rho1", "rho L_1 up/H1 within", "+.2f")]))
    notes.append(f"scatter: {png}")
    main_rho, ctrl = corr[1], corr[3]
    headline = (f"over {main_rho['n']} clouds, Spearman rho: mixing time L_1 vs total persistence "
                f"H1 {main_rho['rho']:+.2f} (p = {main_rho['p']:.1e}) -> {main_rho['verdict']}; "
                f"L_0 vs H0 {corr[0]['rho']:+.2f} (p = {corr[0]['p']:.1e}) -> {corr[0]['verdict']}; "
                f"control triangle count vs H1 {ctrl['rho']:+.2f}")
    common.report(corr, headline, args.out, notes=notes, columns=[
        ("pair", "pair", ""), ("set", "clouds used", ""), ("n", "clouds", "d"), ("rho", "Spearman rho", "+.3f"),
        ("p", "p", ".1e"), ("verdict", "verdict", "")], meta={"clouds": rows, "png": str(png)})
    return main_rho["rho"]


if __name__ == "__main__":
    main()
