"""Bridge between ase-mlrho and the SPARC real-space DFT code: density files, inputs, runs,
Harris-Foulkes energies, equation-of-state scans and training-data generation."""

from .density_file import DensityFile, DensityFileError, read_density, write_density

__all__ = ["DensityFile", "DensityFileError", "read_density", "write_density"]
