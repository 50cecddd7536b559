"""edgeship's version: written into every report, and checked when a report is read back."""

__version__ = "0.1.0"
