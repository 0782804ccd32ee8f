"""`python -m personalm`: the CLI (how `torchrun -m personalm train sft ...` starts it)."""

from personalm.cli.app import main

main()
