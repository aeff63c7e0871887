"""Thread control for torch work inside library code."""

from contextlib import contextmanager

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(n: int):
    """Run torch with ``n`` intra-op threads inside the block, restoring the caller's setting after.

    Small element-wise torch operations on several threads lose badly to thread start-up and to
    barriers when the cores are shared; parallelism in this package comes from processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
