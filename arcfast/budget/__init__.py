"""The time budget: durations and deadlines, and the measured rates every stage plans with (steps,
samples, prefill and decode), so that no piece of work starts that would end past the deadline."""
