"""The `personalm` command line: one sub-command per stage, each also callable from Python."""
