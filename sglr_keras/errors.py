"""Errors a user can fix, kept apart from bugs so the CLI can print them in one line."""


class UserError(Exception):
    """Bad input from the user: a config value, a name, a path, a checkpoint.

    The message names the problem and the fix. The CLI prints it without a
    traceback and exits with status 2.
    """


class RunFolderBusy(UserError):
    """Another process is training into the run folder (see ``RunFolderLock``)."""


class Interrupted(Exception):
    """The user pressed Ctrl-C; the message says where the state is and how to
    go on. The CLI prints it and exits with status 130."""
