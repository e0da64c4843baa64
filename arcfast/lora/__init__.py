"""Many LoRA adapters in one model: the adapter tables, their PEFT files, and the routing of tokens to adapters while decoding."""
