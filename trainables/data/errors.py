"""The one error type raised for bad input data."""


class DataError(ValueError):
    """Input data that cannot be used: the message names the offending file or folder and what is wrong."""
