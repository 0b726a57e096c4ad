"""The one exception type users see: a bad input, with the problem and the fix in one line."""


class QuantsenseError(Exception):
    """An error caused by the user's input (model, data, flags, files); the CLI prints it and exits 2."""
