"""Subcommands of the `voxgate` CLI; each module has register(subparsers) and a run function."""
