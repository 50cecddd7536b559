"""The `edgeship` command. Exit codes: 0 passed, 1 a budget failed, 2 bad input,
3 a device or runtime failure, or a crash. Each command lives in its own module; importing them
registers them on the one typer app."""

from __future__ import annotations

from edgeship.cli import bench, devices, reports, run, schema  # noqa: F401 - registers the commands
from edgeship.cli.common import DEMO_RECIPE, app, demo_recipe_text
from edgeship.cli.crash import crash_line, main, report_crash

__all__ = ["DEMO_RECIPE", "app", "crash_line", "demo_recipe_text", "main", "report_crash"]
