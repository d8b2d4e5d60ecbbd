"""Model-based scoring: the only package that imports `trainer` (lazily, in `handler`)."""
