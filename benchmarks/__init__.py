"""`python -m benchmarks` in a clone runs arcfast's benchmark suite, which lives in the package as
`arcfast.bench` (`arcfast bench` anywhere). This directory keeps the suite's notes (NOTES.md), the
GPU script (gpu.sh) and the committed GPU results (results/)."""
from arcfast.bench.runner import main

__all__ = ["main"]
