"""One exception type for mistakes a user can fix (bad folder, bad flag, missing weights).

Scripts turn it into one line on stderr and exit code 2; everything else is a real bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one clear message (never a traceback)."""
