"""The persistence benchmark's --quick smoke run: real engine, GUDHI and ripser calls."""

from __future__ import annotations

import math

from experiments.bench import persistence as bench


def test_persistence_bench_quick(capsys):
    worst = bench.main(["--quick", "--repeats", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("worst engine/fastest-direct ratio: ")
    assert math.isfinite(worst) and worst > 0 and f"{worst:.2f}" in out[-1]
    text = "\n".join(out)
    for expected in ("engine (ripser)", "ripser.ripser", "gudhi Rips", "gudhi AlphaComplex",
                     "engine (mst, approximate)", "skipped (", "bottleneck(H0 approx, H0 exact)",
                     "deaths are upper bounds: True", "h1_method=ripser"):
        assert expected in text
