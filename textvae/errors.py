"""The one exception type for a user's mistake: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """A problem with the user's input (file, config, run directory), not a bug in textvae."""
