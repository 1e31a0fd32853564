"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a one-line message and exit code 2 (DESIGN.md); anything else is a bug or an
environment failure and exits 1.
"""


class InputError(Exception):
    """Bad usage or bad input: reported as one line, exit code 2, no traceback."""
