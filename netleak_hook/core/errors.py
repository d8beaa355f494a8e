"""One error type for users, and the exit statuses netleak uses."""
from __future__ import annotations


class Exit:
    """Exit statuses, as `env` and `podman run` use them (plain ints: enum,
    with functools and collections, would cost every netleak-exec start
    about a millisecond)."""

    OK = 0
    FAILURE = 1          # a netleak command (not a wrapped one) failed a check
    NETLEAK = 125        # netleak itself failed
    CANNOT_EXEC = 126    # COMMAND found but could not be executed
    NOT_FOUND = 127      # COMMAND not found


def one_line(text: str) -> str:
    """TEXT with line breaks and other unprintable characters escaped, as
    repr() shows them: what users and images hand us can hold any."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class NetleakError(Exception):
    """A failure to report as one line: what is wrong, and what to do."""

    def __init__(self, message: str, exit_status: int = Exit.NETLEAK) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message
        self.exit_status = int(exit_status)

    def __str__(self) -> str:
        return self.message


# the daemon's refusal of a transient scope when it cannot reach systemd
# (netleak-exec then makes a cgroup of netleak's own)
NO_SCOPE = "the netleak daemon cannot reach systemd to make a scope"
