"""Studies and benchmarks: every experiment that measures the library, beside it, never under it."""
