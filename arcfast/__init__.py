"""arcfast: fast test-time fine-tuning of language models on ARC.

``import arcfast`` is light (numpy and the C++ core only); the trainer and generator pull in
PyTorch when first used. The embedding API:

    tasks = arcfast.load_tasks("arc1:eval")              # list[Task]
    ids = arcfast.encode(grid)                           # int32 compact token ids
    grid, status = arcfast.decode(ids)                   # never raises on bad model output
    ids_list = arcfast.encode_batch(grids, "compact")    # all cores, GIL released
"""
from __future__ import annotations

import importlib

from .arc.task import Pair, Task

__version__ = "0.1.0"

# name -> module that defines it; resolved on first access so `import arcfast` stays light.
_LAZY = {
    "load_tasks": "arc.loading",
    "TaskLoadError": "arc.parse",
    "save_tasks_kaggle": "arc.loading",
    "list_bundled": "arc.sources",
    "encode": "arc.formats",
    "decode": "arc.formats",
    "encode_batch": "arc.formats",
    "decode_batch": "arc.formats",
    "FORMATS": "arc.formats",
    "DecodeStatus": "arc.formats",
    "Augmentation": "arc.augment",
    "AugmentConfig": "arc.augment",
    "SampleConfig": "samples.sampling",
    "make_samples": "samples.sampling",
    "build_inference_prompt": "samples.prompts",
    "pack": "samples.packing",
    "PackedStream": "samples.packing",
    "PackedBatch": "samples.batch",
    "Prediction": "answers.vote",
    "Candidate": "answers.vote",
    "score_tasks": "answers.metrics",
    "SubmissionWriter": "answers.submission",
    "validate_submission": "answers.submission",
}

__all__ = ["Pair", "Task", "__version__", *_LAZY]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'arcfast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
