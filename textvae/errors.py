"""The one exception type for a user's mistake: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """A problem with the user's input (file, config, run directory), not a bug in textvae."""


class TrainingStopped(UserError):
    """Training ended early on purpose: a signal (after a checkpoint) or a diverged run (last good one kept)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
