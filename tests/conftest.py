"""Test-suite set-up shared by every test module.

Triton decides once, when it is first imported, whether kernels are compiled for a GPU or run by
its interpreter. On a machine without a GPU, import it here in interpreter mode, before any test
module can import it, then take TRITON_INTERPRET away again: the kernel tests set it back for their
own tests (arcfast.kernels._testing.enable_kernels), and every other test keeps the plain PyTorch
path of the kernels on the CPU, which is much faster than the interpreter.
"""
import os


def _import_triton_for_the_interpreter() -> None:
    if "TRITON_INTERPRET" in os.environ:  # the caller chose; respect it
        return
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        return
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    except ImportError:
        pass
    finally:
        del os.environ["TRITON_INTERPRET"]


_import_triton_for_the_interpreter()


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests, which torch's intra-op pool only slows
    (5x on a busy 2-core machine). Opt in per module: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _fast_paths_on():
    """Every test starts and ends with every fast path on (arcfast.runtime keeps the switches for
    the process, as a run needs)."""
    from arcfast.runtime import reset_fast_paths

    reset_fast_paths()
    yield
    reset_fast_paths()
