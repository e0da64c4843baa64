"""The workflows: the TTFT run (ttft/eval), the train loop, the run directory and its task records, queue, progress and report."""
