"""ase-mlrho: machine-learned ground-state electron densities with calibrated uncertainty.

Pathrudkar et al., npj Comput. Mater. 2024: Set I / Set II grid-point descriptors, a Bayesian
neural network with a heteroscedastic likelihood, and transfer learning from small to large cells.
Inside the package lengths are Bohr and energies Hartree; ASE-facing APIs use Angstrom and eV.
"""

__version__ = "0.1.0"

from .descriptors import DescriptorSpec, Descriptors, UnknownSpeciesError  # noqa: E402
from .grid import Grid, InvalidStructureError  # noqa: E402

__all__ = ["__version__", "DescriptorSpec", "Descriptors", "Grid", "InvalidStructureError", "UnknownSpeciesError"]
