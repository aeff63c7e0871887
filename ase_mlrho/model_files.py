"""Model files and the registry of shipped models.

A model file is one ``.safetensors`` file: the network's tensors (weights, posterior widths,
scalers, radial baseline) and, in the safetensors header, a JSON document with everything needed to
rebuild and trust the network: format version, package version, descriptor spec, network config,
species and valence electrons, mesh spacing, default number of weight samples, calibration, the
range of epistemic sigma seen on validation data (for out-of-distribution warnings), training
provenance and lineage, and the sha256 of the tensors. No pickle is ever loaded.

Format version 2 adds ensembles (``ensemble_size`` in the metadata; tensors ``members.<i>.*``);
version 1 files (single networks) still load.

Shipped models live in ``ase_mlrho/models/<name>.safetensors`` and load by name (``"al-pbe"``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from . import __version__
from .descriptors import DescriptorSpec, UnknownSpeciesError, unknown_species
from .domain import METADATA_KEY as DOMAIN_KEY
from .model import DensityEnsemble, DensityNetwork, NetworkConfig, Prediction
from .surface import METADATA_KEY as SURFACE_KEY
from .surface import SurfaceCalibration

__all__ = ["MLRhoModel", "ModelFileError", "load_model", "save_model", "shipped_models", "metadata_entry", "FORMAT_VERSION"]

FORMAT_VERSION = 2
#: versions this code reads (1: single networks only)
READABLE_FORMAT_VERSIONS = (1, 2)
FORMAT_NAME = "ase-mlrho-model"
SHIPPED_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "al-pbe"


class ModelFileError(ValueError):
    """A model file that cannot be used; the message says what is wrong and what to do."""


@dataclass
class MLRhoModel:
    """A trained density model: the network plus the metadata that says how to use it."""

    network: DensityNetwork | DensityEnsemble
    metadata: dict = field(default_factory=dict)

    @property
    def ensemble_size(self) -> int:
        """Number of ensemble members (1 for a single network)."""
        return len(self.network.members) if isinstance(self.network, DensityEnsemble) else 1

    @property
    def spec(self) -> DescriptorSpec:
        return self.network.spec

    @property
    def species(self) -> tuple[str, ...]:
        return self.network.spec.species

    @property
    def name(self) -> str:
        return self.metadata.get("name", "unnamed")

    @property
    def valence_electrons(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metadata["valence_electrons"].items()}

    @property
    def mesh_spacing_bohr(self) -> float:
        return float(self.metadata["mesh_spacing_bohr"])

    @property
    def n_samples(self) -> int:
        return int(self.metadata.get("n_samples", 8))

    @property
    def epistemic_sigma_validation_max(self) -> float | None:
        """Largest epistemic sigma (e/Bohr^3, 99.9th percentile) seen on validation data."""
        v = self.metadata.get("epistemic_sigma_validation", {}).get("p999_e_per_bohr3")
        return None if v is None else float(v)

    @property
    def training_hole_bohr(self) -> float | None:
        """The largest hole of the training cells (Bohr; :mod:`ase_mlrho.domain`), None when unrecorded."""
        v = self.metadata.get(DOMAIN_KEY, {}).get("largest_hole_bohr")
        return None if v is None else float(v)

    @property
    def surface_calibration(self) -> SurfaceCalibration | None:
        """The surface term of the sigma (:mod:`ase_mlrho.surface`), None when the file has none."""
        return metadata_entry(self.metadata.get("calibration", {}), SURFACE_KEY, SurfaceCalibration.from_metadata)

    def check_species(self, numbers) -> None:
        """Raise :class:`UnknownSpeciesError` if the structure has elements the model does not know."""
        unknown = unknown_species(self.species, numbers)
        if unknown:
            raise UnknownSpeciesError(
                f"model '{self.name}' knows {', '.join(self.species)}; structure has {', '.join(unknown)}"
            )

    def n_electrons(self, numbers) -> float:
        self.check_species(numbers)
        val = self.valence_electrons
        return float(sum(val[chemical_symbols[int(z)]] for z in np.asarray(numbers)))

    def predict(self, desc, n_samples: int | None = None, seed: int = 0, weight_sets=None) -> Prediction:
        n = self.n_samples if n_samples is None else int(n_samples)
        return self.network.predict(desc, n, seed, weight_sets)



def metadata_entry(metadata: dict, key: str, parse):
    """``parse(metadata[key])`` of a model file's metadata, None when the file has no such entry (older
    files), ValueError naming the key for an entry that does not parse."""
    d = (metadata or {}).get(key)
    if d is None:
        return None
    try:
        return parse(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the model file's '{key}' entry is malformed ({exc!r}): {d!r}") from None

def _tensors(network: DensityNetwork | DensityEnsemble) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in network.state_dict().items()}


def network_sha256(network) -> str:
    """sha256 of a network's (or ensemble's) tensors as a model file stores them: identifies the weights."""
    return weights_sha256(_tensors(network))


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _scalers(network) -> dict:
    nets = network.members if isinstance(network, DensityEnsemble) else [network]
    y_mean = [float(n.y_mean) for n in nets]
    y_std = [float(n.y_std) for n in nets]
    if len(nets) == 1:
        return {"y_mean_e_per_bohr3": y_mean[0], "y_std_e_per_bohr3": y_std[0]}
    return {"y_mean_e_per_bohr3": y_mean, "y_std_e_per_bohr3": y_std}


def save_model(model: MLRhoModel, path) -> Path:
    """Write the model atomically to ``path`` (``.safetensors``)."""
    from safetensors.torch import save

    from .files import atomic_write

    path = Path(path)
    tensors = _tensors(model.network)
    meta = dict(model.metadata)
    meta.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        package_version=__version__,
        descriptor_spec=model.spec.to_dict(),
        network_config=model.network.config.to_dict(),
        species=list(model.species),
        scalers=_scalers(model.network),
        weights_sha256=weights_sha256(tensors),
    )
    if model.ensemble_size > 1:
        meta["ensemble_size"] = model.ensemble_size
    else:
        meta.pop("ensemble_size", None)
    meta.setdefault("calibration", {})["sigma_scale"] = float(model.network.sigma_scale)
    model.metadata = meta
    blob = save(tensors, metadata={"ase_mlrho": json.dumps(meta, sort_keys=True)})
    return atomic_write(path, lambda f: f.write(blob), binary=True)


def shipped_models() -> list[str]:
    """Names of the models shipped inside the package."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.safetensors"))


def resolve_model_path(name_or_path) -> Path:
    p = Path(str(name_or_path))
    if p.suffix == ".safetensors" or p.exists() or "/" in str(name_or_path):
        if not p.is_file():
            raise ModelFileError(f"model file {p} does not exist")
        return p
    candidate = SHIPPED_DIR / f"{name_or_path}.safetensors"
    if not candidate.is_file():
        raise ModelFileError(
            f"no shipped model named '{name_or_path}'; shipped models: {', '.join(shipped_models()) or 'none'}; "
            "or give the path of a .safetensors model file"
        )
    return candidate


def load_model(name_or_path=DEFAULT_MODEL) -> MLRhoModel:
    """Load a shipped model by name (``"al-pbe"``) or a model file by path.

    Raises :class:`ModelFileError` for a missing, truncated or corrupt file, a file of another
    format or format version, or tensors that do not match their recorded checksum.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = resolve_model_path(name_or_path)
    data = path.read_bytes()
    try:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("ase_mlrho", "null"))
    except (ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{path}: not a safetensors model file (unreadable header); "
                             "the file is corrupt or truncated: re-download or retrain it") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: a safetensors file, but not an ase-mlrho model (no '{FORMAT_NAME}' metadata)")
    if meta.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise ModelFileError(
            f"{path}: model format version {meta.get('format_version')} but this ase-mlrho "
            f"({__version__}) reads versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}; "
            "install a matching ase-mlrho or retrain the model"
        )
    try:
        tensors = load(data)
    except (SafetensorError, Exception) as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{path}: corrupt or truncated tensor data ({exc}); re-download or retrain it") from None
    if weights_sha256(tensors) != meta.get("weights_sha256"):
        raise ModelFileError(f"{path}: tensor checksum mismatch: the weights were altered or corrupted")
    try:
        spec = DescriptorSpec.from_dict(meta["descriptor_spec"])
        config = NetworkConfig.from_dict(meta["network_config"])
        n_members = int(meta.get("ensemble_size", 1))
        if n_members > 1:
            network = DensityEnsemble([DensityNetwork(spec, config) for _ in range(n_members)])
        else:
            network = DensityNetwork(spec, config)
        network.load_state_dict(tensors, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: metadata and tensors do not fit together ({exc})") from None
    network.eval()
    model = MLRhoModel(network, meta)
    try:
        model.surface_calibration
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    return model
