"""The one error type of the export: bad input, named with the folder or file it came from."""
from __future__ import annotations


class ExportError(ValueError):
    """The checkpoint cannot be exported as asked (wrong folder, missing file, mismatched weights)."""
