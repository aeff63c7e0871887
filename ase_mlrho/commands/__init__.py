"""Subcommands of ``mlrho``: one module each, every module exposing ``register(subparsers)``,
which adds its parser and sets ``func`` (a function of the parsed args returning an exit code).
Modules are imported lazily by name so that ``mlrho --help`` stays fast."""

#: subcommand modules, in the order ``mlrho --help`` lists them
COMMAND_MODULES = ["train", "evaluate", "predict", "select", "energy", "eos", "warmstart", "screening", "finetune",
                   "datagen", "learn", "calibrate_surface"]
