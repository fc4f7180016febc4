"""User-facing errors: raised for bad input; the CLI prints them as one line, widgets notify."""


class UserError(Exception):
    """A problem the user can fix (bad path, wrong shape, incompatible model...)."""


class OutputError(UserError):
    """Writing an output failed (read-only folder, full disk): the destination is at fault, not one
    input, so a batch stops instead of failing every remaining file the same way."""
