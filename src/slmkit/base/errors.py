"""The one error type for user mistakes. The CLI prints its message on one line and exits with code 2."""


class SlmError(Exception):
    """Bad input: the message says what is wrong and what to do."""
