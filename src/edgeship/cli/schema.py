"""`edgeship schema recipe|profile|report`: the JSON Schema of each file edgeship reads or
writes, from the pydantic models that validate them, for editors (Taplo and VS Code's Even
Better TOML read a `#:schema` line or a `$schema` key) and for the tools that read report.json."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from edgeship.cli.common import app, print_json


class SchemaOf(str, Enum):
    RECIPE = "recipe"
    PROFILE = "profile"
    REPORT = "report"
    MODEL_BENCH = "model-bench"


def json_schema(of: SchemaOf) -> dict:
    from edgeship.devices.profile import DeviceProfile
    from edgeship.recipe import Recipe
    from edgeship.report.schema import ModelBenchReport, Report

    model = {SchemaOf.RECIPE: Recipe, SchemaOf.PROFILE: DeviceProfile, SchemaOf.REPORT: Report,
             SchemaOf.MODEL_BENCH: ModelBenchReport}[of]
    titles = {SchemaOf.RECIPE: "edgeship recipe", SchemaOf.PROFILE: "edgeship device profile",
              SchemaOf.REPORT: "edgeship report.json (edgeship run)",
              SchemaOf.MODEL_BENCH: "edgeship report.json (edgeship bench MODEL)"}
    schema = model.model_json_schema(mode="validation" if of in (SchemaOf.RECIPE, SchemaOf.PROFILE)
                                     else "serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": titles[of], **{
        k: v for k, v in schema.items() if k != "title"}}


@app.command()
def schema(of: Annotated[SchemaOf, typer.Argument(metavar="recipe|profile|report|model-bench",
                                                  help="Which file's schema.")]) -> None:
    """Print the JSON Schema of a recipe, a device profile or a report.json."""
    print_json(json_schema(of))
