"""The one exception type for a user's mistake: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """A problem with the user's input (file, config, run directory), not a bug in textvae."""


class TrainingStopped(UserError):
    """Training ended early on purpose: a signal (after a checkpoint) or a diverged run (last good one kept)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def require_extra(extra: str, who_needs: str, *modules: str) -> None:
    """Raise a UserError naming the pip extra (pyproject.toml) that installs `modules` when one is missing, e.g.
    "the image baselines need the [image] extra: pip install -e '.[image]' (missing: PIL)". Imports nothing."""
    from importlib.util import find_spec

    missing = [module for module in modules if find_spec(module) is None]
    if missing:
        raise UserError(f"{who_needs} the [{extra}] extra: pip install -e '.[{extra}]' (missing: {', '.join(missing)})")
