"""What every kernel file shares: whether to launch Triton at all, and a kernel wrapper that works
both compiled (GPU) and interpreted (CPU, ``TRITON_INTERPRET=1``).

Triton fixes its mode when it is first imported: with ``TRITON_INTERPRET=1`` in the environment at
that moment its own library functions (``tl.sum``, ``tl.max``...) are interpreted, otherwise they
are compiled, and the two cannot be mixed in one process. So our kernels are built lazily, on first
launch, in whatever mode Triton is in, and a public function decides per call:

- tensor on a GPU                                   -> the Triton kernel (compiled);
- tensor on the CPU, Triton in interpreter mode and
  ``TRITON_INTERPRET=1`` in the environment now      -> the Triton kernel, interpreted (tests);
- anything else                                     -> the plain PyTorch reference.

The CPU trainer therefore never pays for the interpreter unless it asks for it.

Triton is optional (``pip install 'arcfast[triton]'``; CUDA builds of torch bring it). Without it a
small stub below lets every kernel file import, ``HAS_TRITON`` is False and every public function
runs its reference, on any device.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Optional, Sequence

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # the optional extra arcfast[triton] is not installed
    HAS_TRITON = False

    class _Constexpr:  # kernel signatures annotate with tl.constexpr at definition time
        pass

    class _TlStub:
        constexpr = _Constexpr

    class _TritonStub:
        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 if n <= 1 else 1 << (n - 1).bit_length()

        class Config:
            def __init__(self, kwargs, num_warps=4, num_stages=3):
                self.kwargs, self.num_warps, self.num_stages = kwargs, num_warps, num_stages

    triton = _TritonStub()  # type: ignore[assignment]
    tl = _TlStub()  # type: ignore[assignment]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def triton_interpreted() -> bool:
    """Whether Triton was imported in interpreter mode (decided once, at its import)."""
    if not HAS_TRITON:
        return False
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.sum, InterpretedFunction)


def use_triton(t) -> bool:
    """Whether a public function should launch its Triton kernel for tensor ``t`` (see module doc)."""
    if not HAS_TRITON:
        return False
    if t.is_cuda:
        return True
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and triton_interpreted()


def on_cuda_graph_capture() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def sm_count(device) -> int:
    if device.type == "cuda":
        return _cuda_sm_count(device.index)
    return 4  # interpreter: a few programs exercise the grid-stride loops without taking long


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index) -> int:
    import torch

    return torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index).multi_processor_count


def config(num_warps: int = 4, num_stages: int = 3, **meta: Any):
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


class Kernel:
    """A Triton kernel, built on first launch in the mode Triton runs in.

    ``configs``/``key`` autotune it on the GPU (``ARCFAST_AUTOTUNE=0``: always the first config,
    which saves the tuning time of each new shape); ``interpret`` gives the one set of block sizes the
    interpreter uses (it would otherwise time every config, slowly, on the CPU). ``reset_to_zero``
    and ``restore_value`` name output arguments the autotuner must reset or restore between its
    trial launches (accumulating kernels).
    """

    def __init__(self, fn: Callable, configs: Optional[Sequence] = None, key: Sequence[str] = (),
                 interpret: Optional[dict] = None, reset_to_zero: Sequence[str] = (),
                 restore_value: Sequence[str] = ()):
        self.fn = fn
        self.configs = list(configs or [])
        self.key = list(key)
        self.interpret_meta = dict(interpret or {})
        self.reset_to_zero = list(reset_to_zero)
        self.restore_value = list(restore_value)
        self._built = None
        self._jit = None
        self._built_interpreted: Optional[bool] = None
        self.pinned: Optional[int] = None
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def _build(self):
        interpreted = triton_interpreted()
        if self._built is None or self._built_interpreted != interpreted:
            if interpreted:
                from triton.runtime.interpreter import InterpretedFunction

                self._built = InterpretedFunction(self.fn)
            else:
                from triton.runtime.jit import JITFunction

                k = self._jit = JITFunction(self.fn)
                if self.configs:
                    k = triton.autotune(self.configs, key=self.key,
                                        reset_to_zero=self.reset_to_zero or None,
                                        restore_value=self.restore_value or None)(k)
                self._built = k
            self._built_interpreted = interpreted
        return self._built

    def __getitem__(self, grid):
        k = self._build()
        if self._built_interpreted:
            meta = self.interpret_meta
            return lambda *args, **kwargs: k[grid](*args, **{**meta, **kwargs})
        cfg = self._fixed_config()
        if cfg is not None:
            raw = self._jit
            meta = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            return lambda *args, **kwargs: raw[grid](*args, **meta, **kwargs)
        return k[grid]

    def _fixed_config(self):
        if not self.configs:
            return None
        if self.pinned is not None:
            return self.configs[self.pinned]
        if os.environ.get("ARCFAST_AUTOTUNE", "1") == "0":
            return self.configs[0]
        return None

    @contextlib.contextmanager
    def pin(self, index: int):
        """Launch with ``configs[index]`` instead of autotuning (tests check every config)."""
        old, self.pinned = self.pinned, index
        try:
            yield
        finally:
            self.pinned = old

    def best_config(self):
        """The autotuner's choice after a launch (GPU only), for benchmarks and notes."""
        return getattr(self._built, "best_config", None)


def helper(fn):
    """Decorator for a Triton device function called from kernels. Triton's mode is already fixed
    when a kernel file is imported (this module imports triton), so the choice is made here."""
    if not HAS_TRITON:
        return fn
    if triton_interpreted():
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(fn)
    from triton.runtime.jit import JITFunction

    return JITFunction(fn)


def kernel(configs: Optional[Sequence] = None, key: Sequence[str] = (), interpret: Optional[dict] = None,
           reset_to_zero: Sequence[str] = (), restore_value: Sequence[str] = ()):
    """Decorator: ``@kernel(configs=[...], key=[...], interpret={...})`` over a Triton function."""

    def wrap(fn):
        return Kernel(fn, configs, key, interpret, reset_to_zero, restore_value)

    return wrap
