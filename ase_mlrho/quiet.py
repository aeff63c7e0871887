"""Silence third-party chatter on stdout: one context manager for the whole package.

sparc-x-api prints a line per pseudopotential it checks (``Checking .../psp8``) and warns about keys it
does not validate whenever it reads or writes a SPARC file; ase warns that ``ASE_SPARC_COMMAND`` should
live in a config file. None of it is news to a user, and on stdout it would break ``--json`` output.
"""

from __future__ import annotations

import contextlib
import io
import warnings

__all__ = ["quiet_third_party"]


@contextlib.contextmanager
def quiet_third_party(all_warnings: bool = True):
    """Swallow stdout inside the block; with ``all_warnings`` also every warning, otherwise only the
    known-harmless ones (FD_GRID overriding sparc-x-api's mesh, ASE's config-file advice)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        if all_warnings:
            warnings.simplefilter("ignore")
        else:
            warnings.filterwarnings("ignore", message=".*conversion of h to mesh grid is ignored.*")
            warnings.filterwarnings("ignore", message=".*Loaded ASE_SPARC_COMMAND from environment.*")
        yield
