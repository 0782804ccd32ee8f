"""One error type for everything a user can fix: the CLI prints it as one line and exits 2."""


class PersonalmError(Exception):
    """A problem with the user's input or setup (bad file, unknown model, unreachable server)."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        self.source = source
        self.line = line
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
