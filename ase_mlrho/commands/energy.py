"""``mlrho energy SPARC_DIR_OR_STRUCTURE -m MODEL [--json]``: the Harris-Foulkes energy of the
predicted density, by one SPARC diagonalisation.

predict (seeded) -> clip, renormalise -> write SPARC's input density -> one SPARC run with
``MAXIT_SCF 1`` and enough CheFSI passes (``--rho-trigger``) -> the free energy of that density.
On a SPARC run directory the reference SCF energy is read from the run and the error reported;
the reference run's own SCF wall time is reported beside the Harris-Foulkes cost.

When the model file carries a fitted screening model (``hf_screening`` in its metadata, see
:mod:`sparc_bridge.screening`), the same SPARC run also prints its output density and the
second-order corrected energy is reported beside the plain one (``--no-second-order`` skips it).

JSON keys: ``energy_hf_ha_per_atom``, ``energy_scf_ha_per_atom`` and ``error_ha_per_atom``
(= HF - SCF; both null without a reference), ``energy_corrected_ha_per_atom`` and
``error_corrected_ha_per_atom`` (null without a screening model), ``scf_error_first_iteration`` (||rho_out - rho_in|| /
||rho_out|| of the predicted density, a free measure of its quality), ``seconds`` (the whole
evaluation: prediction + SPARC), and the details: stage timings, the uncertainty summary, the run
directory.
"""

from __future__ import annotations

import math
import time

from . import common


def register(subparsers) -> None:
    from sparc_bridge.inputs import DEFAULT_RHO_TRIGGER

    p = subparsers.add_parser(
        "energy", help="Harris-Foulkes energy of the predicted density through SPARC",
        description="Predict the density of a structure, give it to SPARC as the input density and take the "
                    "Harris-Foulkes free energy of one diagonalisation (no SCF). On a SPARC run directory the "
                    "reference SCF energy is read and the error reported (Ha/atom). Needs SPARC: set "
                    "ASE_SPARC_COMMAND (e.g. 'mpirun -np 2 /path/to/sparc', without -name).")
    p.add_argument("structure", metavar="SPARC_DIR_OR_STRUCTURE",
                   help="a finished SPARC run directory (reference energy read) or a structure file")
    common.add_common_options(p, "evaluation")
    p.add_argument("--rho-trigger", type=int, default=None,
                   help=f"CheFSI passes on the fixed input Hamiltonian (default: the model's measured setting, "
                        f"else {DEFAULT_RHO_TRIGGER}; see benchmarks/README.md)")
    common.add_second_order_option(p, "the energy")
    p.set_defaults(func=run)


def run(args) -> int:
    from ase.units import Hartree

    from sparc_bridge.harris_foulkes import GridMismatchError, harris_foulkes_energy
    from sparc_bridge.inputs import HarrisFoulkesSettings
    from sparc_bridge.ml_provider import MLDensityProvider, sparc_settings_for_model
    from sparc_bridge.run import SparcNotFoundError, SparcRunError

    name = "energy"
    try:
        if args.rho_trigger is not None:
            HarrisFoulkesSettings(rho_trigger=args.rho_trigger)  # refuse a bad value before any work
        command, inp, model, provider_settings, workdir = common.prepare_run(args, name)
        hf = common.model_hf_settings(args, model)
    except (common.CommandError, ValueError) as exc:
        return common.fail(name, exc)

    settings = sparc_settings_for_model(model, atoms=inp.atoms)
    try:
        screening = common.model_screening(args, model)
    except common.CommandError as exc:
        return common.fail(name, exc)
    provider = MLDensityProvider(model, *provider_settings)
    atoms = inp.atoms
    t0 = time.perf_counter()
    try:
        grid, density, uncertainty = provider(atoms)
        t_pred = time.perf_counter() - t0
        result = harris_foulkes_energy(atoms, density, grid, settings, workdir / "hf", hf, command,
                                       args.timeout, screening=screening)
    except (SparcRunError, GridMismatchError) as exc:
        return common.run_failed(name, exc)
    except SparcNotFoundError as exc:
        return common.fail(name, exc)
    except ValueError as exc:  # a prediction that cannot be renormalised
        return common.run_failed(name, exc)
    seconds = time.perf_counter() - t0

    e_hf = result.energy_per_atom_ha
    e_scf = inp.scf_energy_ha_per_atom
    e_corr = result.corrected_energy_per_atom_ha
    report = {
        "structure": inp.source,
        "natoms": len(atoms),
        "model": model.name,
        "energy_hf_ha_per_atom": e_hf,
        "energy_scf_ha_per_atom": e_scf,
        "error_ha_per_atom": None if e_scf is None else e_hf - e_scf,
        "energy_corrected_ha_per_atom": e_corr,
        "error_corrected_ha_per_atom": None if e_scf is None or e_corr is None else e_corr - e_scf,
        "second_order": None if result.second_order is None else {
            "correction_ha_per_atom": result.second_order.correction_ha / len(atoms),
            "mean_fxc_ha_bohr3": result.second_order.mean_fxc_ha_bohr3,
            # all-wavelength: every component counts (no cut-off), and the Hartree and xc parts are reported
            "q_cut_per_bohr": None if math.isinf(result.second_order.q_cut_per_bohr)
            else result.second_order.q_cut_per_bohr,
            "n_components": result.second_order.n_components,
            "method": result.second_order.method,
            "hartree_ha_per_atom": None if result.second_order.hartree_ha is None
            else result.second_order.hartree_ha / len(atoms),
            "xc_ha_per_atom": None if result.second_order.xc_ha is None else result.second_order.xc_ha / len(atoms),
            "screening": screening.to_dict()},
        "scf_error_first_iteration": result.first_scf_error,
        "seconds": seconds,
        "energy_hf_ev": result.energy_ev,
        "predict_seconds": t_pred,
        "sparc_seconds": result.sparc_wall_s,
        "sparc_walltime_s": result.run.sparc_walltime_s,
        "scf_reference_iterations": inp.scf_iterations,
        "scf_reference_walltime_s": inp.scf_walltime_s,
        "rho_trigger": hf.rho_trigger,
        "states_factor": hf.states_factor,
        "nstates": hf.nstates(result.n_electrons),  # None: SPARC's default
        "grid_shape": list(grid.shape),
        "reference_grid_shape": None if inp.grid_shape is None else list(inp.grid_shape),
        "electrons_before_renormalisation": result.electrons_before,
        "uncertainty": uncertainty,
        "workdir": str(workdir),
    }
    if common.finish_report(workdir, report, args.json):
        return 0
    print(f"structure        {inp.source}: {len(atoms)} atoms, model {model.name}, grid "
          f"{' x '.join(map(str, grid.shape))}")
    print(f"E_HF             {e_hf:.10f} Ha/atom ({result.energy_ev:.6f} eV total)")
    if e_scf is not None:
        err = e_hf - e_scf
        print(f"E_SCF reference  {e_scf:.10f} Ha/atom")
        print(f"error HF - SCF   {err:+.3e} Ha/atom ({err * Hartree * 1000:+.3f} meV/atom)")
    if e_corr is not None:
        print(f"E_HF + 2nd order {e_corr:.10f} Ha/atom (screened second-order correction "
              f"{e_corr - e_hf:+.3e} Ha/atom)")
        if e_scf is not None:
            err = e_corr - e_scf
            print(f"error corr - SCF {err:+.3e} Ha/atom ({err * Hartree * 1000:+.3f} meV/atom)")
    print(f"SCF error it. 1  {result.first_scf_error:.3e} (||rho_out - rho_in|| / ||rho_out||)")
    ref = "" if inp.scf_walltime_s is None else \
        f"; reference SCF {inp.scf_walltime_s:.1f} s, {inp.scf_iterations} iterations"
    print(f"time             {seconds:.1f} s (prediction {t_pred:.1f} s, SPARC {result.sparc_wall_s:.1f} s){ref}")
    print(f"sigma total      mean {uncertainty['sigma_total_mean_e_per_bohr3']:.3e}, max "
          f"{uncertainty['sigma_total_max_e_per_bohr3']:.3e} e/Bohr^3")
    print(f"run directory    {workdir}")
    return 0
