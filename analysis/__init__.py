"""Analysis of finished (or running) training runs from their output directories alone: tables,
plots and reports (``analysis.compare``). Above the callbacks, below the entry points."""
