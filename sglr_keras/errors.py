"""Errors a user can fix, kept apart from bugs so the CLI can print them in one line."""


class UserError(Exception):
    """Bad input from the user: a config value, a name, a path, a checkpoint.

    The message names the problem and the fix. The CLI prints it without a
    traceback and exits with status 2.
    """
