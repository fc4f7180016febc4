"""User-facing errors: raised for bad input; the CLI prints them as one line, widgets notify."""


class UserError(Exception):
    """A problem the user can fix (bad path, wrong shape, incompatible model...)."""
