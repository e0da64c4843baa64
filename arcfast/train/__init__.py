"""One optimizer step over many adapters: the loss, the optimizer, the step (plain or graphed) and the training backends."""
