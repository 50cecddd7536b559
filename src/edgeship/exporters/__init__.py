"""One module per format; all follow the small protocol in base.py."""

from edgeship.exporters.base import ExportedArtifact, Exporter, exporter_for

__all__ = ["ExportedArtifact", "Exporter", "exporter_for"]
