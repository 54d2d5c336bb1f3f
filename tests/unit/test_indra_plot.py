"""analysis.plots.smooth (`lhp compare --smooth`): the moving average is over steps, not points."""

from __future__ import annotations

import numpy as np

from analysis.plots import smooth


def test_smooth_window_counts_steps_not_logged_points() -> None:
    steps = np.array([0, 10, 20, 30, 40])
    values = np.array([4.0, 2.0, 6.0, 8.0, 10.0])
    # window 20 steps = the point itself and the one logged 10 steps earlier
    np.testing.assert_allclose(smooth(steps, values, 20), [4.0, 3.0, 4.0, 7.0, 9.0])
    np.testing.assert_allclose(smooth(steps, values, 1), values)
    # irregular spacing (a resumed run): only points inside the window count
    np.testing.assert_allclose(smooth(np.array([0, 5, 100]), np.array([1.0, 3.0, 5.0]), 50),
                               [1.0, 2.0, 5.0])
