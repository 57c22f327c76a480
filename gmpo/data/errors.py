"""The data error type, below every data module (sources, loader, the arithmetic task)."""


class DataError(ValueError):
    """A data source or row is malformed; the message names the file, the row and the field."""
