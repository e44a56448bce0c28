"""The one error type of the export (of the hierarchy in utils/errors.py): bad input, named with the folder
or file it came from."""
from __future__ import annotations

from ..utils.errors import ExportError

__all__ = ["ExportError"]
