"""The benchmark suite: every ``bench_*.py`` here measures a fast path beside its baseline in the
same run (``arcfast bench``, ``python -m arcfast.bench``; see runner.py). ``profile_step`` profiles
one training and one decode step; ``plot`` charts results files."""
