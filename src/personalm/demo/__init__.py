"""The steps of `personalm demo`: each stage run end to end at toy size on inputs made here."""
