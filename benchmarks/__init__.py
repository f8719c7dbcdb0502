"""Speed and memory benchmarks of lavis-mmict, every figure a ratio of two variants measured side
by side in one run (see BENCHMARKS.md). Run: ``make bench`` or ``python -m benchmarks --help``."""
