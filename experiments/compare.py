"""Compare runs offline from their directories: a table (Markdown, CSV, HTML) and plots.

    lhp compare logs/train/smoke/*                      # run dirs or globs
    lhp compare logs/study/smoke_seeds                  # a study: every run below it
    lhp compare RUNS --metrics val/loss,val/ppl --group-by model.optimizer.lr --x tokens
    lhp compare RUNS --metrics val/bpc --x flops        # valid bpc against training FLOPs
    lhp compare RUNS --preset indra                     # the IndraQuantum monitor panels
    lhp compare RUNS --wandb                            # also log it to a W&B run (offline)

(``python -m experiments.compare ...`` is the same.) Writes compare.md, compare.csv,
compare.html (self-contained), curves.png, headline.png and sweep_<key>.png to ``--out``; the
table goes to stdout, one ``warning:`` line per problem with the input to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.compare import compare, log_to_wandb, markdown_report, write_report
from analysis.plots import BANDS, PRESETS, XAXES, default_panels
from lhp.errors import entry_point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lhp compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories, globs, or directories "
                                                "holding runs (a study)")
    parser.add_argument("--out", type=Path, default=Path("compare"),
                        help="output directory (default: ./compare)")
    parser.add_argument("--metrics", default="val/loss",
                        help="comma-separated metrics; the first sorts the table and is the "
                             "headline (default: val/loss)")
    parser.add_argument("--group-by", default="auto",
                        help="auto (every differing config key but seed), run (no grouping), "
                             "or comma-separated config keys (a unique suffix such as lr works)")
    parser.add_argument("--x", choices=XAXES, default="step",
                        help="x axis of the curves: step, tokens (train/tokens_seen) or flops "
                             "(training FLOPs, train/flops)")
    parser.add_argument("--band", choices=BANDS, default="minmax",
                        help="band over seeds: minmax or std (±1 sample std)")
    parser.add_argument("--smooth", type=int, default=None,
                        help="moving average of train curves over this many steps "
                             "(default: none, 20 with --preset indra)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="panels of a preset instead of train/loss + the metrics")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the table and images to a W&B run (WANDB_MODE, "
                             "default offline; `wandb sync` it later)")
    parser.add_argument("--wandb-project", default="lhplatform", help="W&B project")
    return parser


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] or ["val/loss"]
    group_by = args.group_by if args.group_by in ("auto", "run") else \
        [k.strip() for k in args.group_by.split(",") if k.strip()]
    panels, window, title = PRESETS[args.preset] if args.preset else \
        (default_panels(metrics), 0, None)
    comparison = compare(args.runs, metrics, group_by)
    files = write_report(comparison, args.out, panels, x=args.x, band=args.band,
                         window=window if args.smooth is None else args.smooth, title=title)
    for note in comparison.notes:
        print(f"warning: {note}", file=sys.stderr)
    print(markdown_report(comparison))
    if args.wandb:
        images = [f for f in files if f.suffix == ".png"]
        print(f"W&B run: {log_to_wandb(comparison, images, args.out, args.wandb_project)}")
    print(f"wrote {', '.join(f.name for f in files)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
