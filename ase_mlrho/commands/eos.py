"""``mlrho eos STRUCTURE -m MODEL [--strains ...] [--with-scf | --scf-runs DIR...] [--json] [--plot FILE]``:
lattice parameter and bulk modulus from ML Harris-Foulkes energies, optionally beside SCF DFT.

Strains are linear fractional changes of the lattice parameter (every cell vector times
``1 + strain``, atoms following the cell); default -0.025 .. +0.025 in 5 steps. At each strain the
model predicts the density and SPARC gives its Harris-Foulkes energy (one diagonalisation);
``ase.eos`` (Birch-Murnaghan by default) fits E(V). ``--with-scf`` runs full SCF at the same strains
and grids as the reference; ``--scf-runs`` fits finished SPARC runs instead (e.g. the shared
reference runs at several lattice constants), which costs nothing.

The lattice parameter reported is the conventional cubic one for a cubic crystal, found with
spglib from the unstrained structure: ``a0 = (n_conv * V0 / natoms) ** (1/3)`` with ``n_conv`` the
atoms of the conventional cell (fcc 4, bcc 2, diamond 8, ...), so it does not depend on the
supercell; null for a non-cubic structure. A fit whose minimum falls outside the sampled volumes
is an error (exit 1), not a warning.

With a model that carries a screening model (``mlrho screening``), the ML energies are the
second-order corrected Harris-Foulkes energies (``second_order`` in the JSON; each point also keeps
the plain ``energy_hf_ha_per_atom``); ``--no-second-order`` uses the plain ones.

JSON keys: ``ml`` and ``scf`` (null without a reference), each with ``a0_bohr``, ``a0_ang``,
``v0_bohr3_per_atom``, ``e0_ha_per_atom``, ``bulk_modulus_gpa`` and the points; ``differences``
(ML - SCF) when both exist; ``seconds``.
"""

from __future__ import annotations

import time
from pathlib import Path


from . import common


def register(subparsers) -> None:
    from sparc_bridge.eos import DEFAULT_STRAINS

    p = subparsers.add_parser(
        "eos", help="lattice parameter and bulk modulus from ML Harris-Foulkes energies (SPARC)",
        description="Scan linear strains of the lattice parameter, take the Harris-Foulkes energy of the predicted "
                    "density at each through SPARC, and fit an equation of state with ase.eos: V0, E0, bulk "
                    "modulus, and the conventional cubic lattice parameter for cubic crystals. Needs SPARC "
                    "(ASE_SPARC_COMMAND).")
    p.add_argument("structure", metavar="STRUCTURE", help="structure file (or a SPARC run directory) at about the "
                                                          "equilibrium lattice parameter")
    common.add_common_options(p, "scan")
    p.add_argument("--strains", type=float, nargs="+", default=list(DEFAULT_STRAINS), metavar="S",
                   help="linear fractional changes of the lattice parameter (default -0.025 -0.0125 0 0.0125 0.025)")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--with-scf", action="store_true", help="also run full SCF at every strain (the reference)")
    ref.add_argument("--scf-runs", nargs="+", metavar="SPARC_DIR",
                     help="fit these finished SPARC runs of the same structure as the SCF reference instead")
    p.add_argument("--eos", default="birchmurnaghan", help="ase.eos form (default birchmurnaghan)")
    p.add_argument("--rho-trigger", type=int, default=None, help="CheFSI passes of each Harris-Foulkes run "
                                                                  "(default: the model's measured setting)")
    p.add_argument("--plot", metavar="FILE", help="plot E(V) with the fits to FILE (png, pdf, svg)")
    common.add_second_order_option(p, "the EOS energies")
    p.set_defaults(func=run)


def run(args) -> int:
    from ase.units import Bohr, Hartree

    from sparc_bridge.eos import (EOSFitError, conventional_cubic_atoms, eos_differences, eos_from_runs, eos_report,
                                  fit_eos, plot_eos, strained)
    from sparc_bridge.harris_foulkes import GridMismatchError, HarrisFoulkesCalculator
    from sparc_bridge.inputs import HarrisFoulkesSettings
    from sparc_bridge.ml_provider import MLDensityProvider, sparc_settings_for_model
    from sparc_bridge.run import SparcNotFoundError, SparcRunError
    from sparc_bridge.scf_calculator import SparcSCFCalculator

    name = "eos"
    try:
        strains = [float(s) for s in args.strains]
        if len(strains) < 4:
            raise ValueError(f"an EOS fit needs at least 4 strains, got {len(strains)}")
        if len(set(strains)) != len(strains) or min(strains) <= -1:
            raise ValueError("strains must be distinct and greater than -1")
        if args.rho_trigger is not None:
            HarrisFoulkesSettings(rho_trigger=args.rho_trigger)  # refuse a bad value before any work

        def check_scf_runs(model):
            for d in args.scf_runs or ():
                if not (Path(d) / "SPARC.out").is_file():
                    raise ValueError(f"--scf-runs: {d} is not a SPARC run directory (no SPARC.out)")
                common.check_reference(model, d)

        command, inp, model, provider_settings, workdir = common.prepare_run(args, name, check_scf_runs)
        hf = common.model_hf_settings(args, model)
    except (common.CommandError, ValueError) as exc:
        return common.fail(name, exc)

    atoms = inp.atoms
    n_conv = conventional_cubic_atoms(atoms)
    settings = sparc_settings_for_model(model, atoms=atoms)
    try:
        screening = common.model_screening(args, model)
    except common.CommandError as exc:
        return common.fail(name, exc)
    ml_calc = HarrisFoulkesCalculator(MLDensityProvider(model, *provider_settings), settings, hf,
                                      directory=workdir / "ml", command=command, timeout_s=args.timeout,
                                      screening=screening)
    scf_calc = SparcSCFCalculator(settings, directory=workdir / "scf", command=command,
                                  timeout_s=args.timeout) if args.with_scf else None
    t0 = time.perf_counter()
    ml_points, scf_points = [], []
    volumes, e_ml, e_scf = [], [], []
    try:
        for s in strains:
            a = strained(atoms, s)
            a.calc = ml_calc
            e = float(a.get_potential_energy())
            r = ml_calc.last_result
            volumes.append(float(a.get_volume()))
            e_ml.append(e)
            ml_points.append({"strain": s, "v_bohr3_per_atom": a.get_volume() / len(a) / Bohr ** 3,
                              "energy_ha_per_atom": e / Hartree / len(a), "energy_hf_ha_per_atom":
                                  r.energy_per_atom_ha, "scf_error_first_iteration":
                                  r.first_scf_error, "seconds": r.total_s})
            if scf_calc is not None:
                a.calc = scf_calc
                e_scf.append(float(a.get_potential_energy()))
                rs = scf_calc.last_result
                scf_points.append({"strain": s, "v_bohr3_per_atom": a.get_volume() / len(a) / Bohr ** 3,
                                   "energy_ha_per_atom": rs.free_energy_per_atom_ha,
                                   "iterations": rs.n_scf_iterations, "seconds": rs.wall_time_s})
            a.calc = None
    except (SparcRunError, GridMismatchError, ValueError) as exc:
        return common.run_failed(name, exc)
    except SparcNotFoundError as exc:
        return common.fail(name, exc)

    try:
        ml = fit_eos(volumes, e_ml, len(atoms), None, args.eos, "ML-HF", n_conv)
        scf = None
        if scf_calc is not None:
            scf = fit_eos(volumes, e_scf, len(atoms), None, args.eos, "SCF", n_conv)
        elif args.scf_runs:
            scf = eos_from_runs(args.scf_runs, None, args.eos, "SCF runs", conventional_atoms=n_conv)
            scf_points = None
    except (EOSFitError, SparcRunError) as exc:
        # the energies were paid for: show them, so a shifted scan can be chosen without rerunning blindly
        rows = [f"  strain {p['strain']:+.4f}: ML-HF {p['energy_ha_per_atom']:.8f} Ha/atom" for p in ml_points]
        if scf_points:
            rows = [r + f", SCF {q['energy_ha_per_atom']:.8f} Ha/atom" for r, q in zip(rows, scf_points)]
        return common.run_failed(name, f"{exc}\nenergies so far (run directory {workdir}):\n" + "\n".join(rows))
    seconds = time.perf_counter() - t0

    report = {
        "structure": inp.source,
        "natoms": len(atoms),
        "model": model.name,
        "conventional_cell_atoms": n_conv,
        "strains": strains,
        "second_order": None if screening is None else screening.to_dict(),
        "ml": eos_report(ml, ml_points),
        "scf": None if scf is None else eos_report(scf, scf_points),
        "scf_source": "with-scf" if args.with_scf else ("scf-runs" if args.scf_runs else None),
        "seconds": seconds,
        "workdir": str(workdir),
    }
    if scf is not None:
        report["differences"] = eos_differences(ml, scf)
    if args.plot:
        try:
            plot_eos({"ML-HF": ml, **({} if scf is None else {scf.label: scf})}, args.plot)
        except (OSError, ValueError) as exc:
            return common.run_failed(name, f"cannot write the plot {args.plot}: {exc}")
        report["plot"] = args.plot
    if common.finish_report(workdir, report, args.json):
        return 0
    print(f"structure  {inp.source}: {len(atoms)} atoms, model {model.name}, {len(strains)} strains "
          f"{min(strains):+g} .. {max(strains):+g}")
    rows = [("ML-HF", report["ml"])] + ([("SCF", report["scf"])] if scf is not None else [])
    for label, r in rows:
        a0 = "a0 n/a (not cubic)" if r["a0_bohr"] is None else f"a0 {r['a0_bohr']:.4f} Bohr ({r['a0_ang']:.4f} A)"
        print(f"{label:6s}     {a0}, B {r['bulk_modulus_gpa']:.2f} GPa, V0 {r['v0_bohr3_per_atom']:.3f} Bohr^3/atom, "
              f"E0 {r['e0_ha_per_atom']:.8f} Ha/atom")
    if scf is not None:
        d = report["differences"]
        da0 = "" if d["da0_bohr"] is None else f"da0 {d['da0_bohr']:+.4f} Bohr, "
        print(f"ML - SCF   {da0}dB {d['dbulk_modulus_gpa']:+.2f} GPa ({d['dbulk_modulus_percent']:+.2f} %), "
              f"dE0 {d['de0_ha_per_atom'] * Hartree * 1000:+.3f} meV/atom")
    print(f"time       {seconds:.1f} s; run directory {workdir}")
    return 0
