"""Training samples without torch: which pairs a step draws (the sampler and its objectives), the prompts, and packing samples into a batch."""
