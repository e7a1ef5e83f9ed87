"""``python -m exporter`` runs the command-line interface."""

from exporter.cli import run

run()
