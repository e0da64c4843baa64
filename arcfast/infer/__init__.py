"""From adapters to candidate grids and scores: batched generation, depth-first search, prediction, re-scoring and verification."""
