"""The two kinds of failure a user can see. Everything else is a bug and shows as one."""


class HW2Error(Exception):
    """A failure with a one-sentence message meant for the user."""

    exit_code = 1


class UsageError(HW2Error):
    """The user asked for something invalid (bad value, missing file): exit code 2."""

    exit_code = 2


class RunError(HW2Error):
    """A valid request failed while running (no weights offline, out of memory): exit code 1."""

    exit_code = 1
