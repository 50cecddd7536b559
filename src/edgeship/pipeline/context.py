"""What every stage of one run works with: the recipe, the plan, and the run's services (stage
cache, stage log, progress, run folder). Results never live here: they are the stages' return
values (values.py)."""

from __future__ import annotations

from dataclasses import dataclass

from edgeship.cluster import Tasks
from edgeship.metrics import TaskLoss, TaskMetric
from edgeship.pipeline.cache import StageCache
from edgeship.pipeline.plan import Plan
from edgeship.pipeline.runfolder import RunFolder
from edgeship.pipeline.stages import StageLog
from edgeship.progress import Progress
from edgeship.recipe import Recipe


@dataclass(frozen=True)
class RunContext:
    recipe: Recipe
    plan: Plan
    folder: RunFolder
    cache: StageCache
    log: StageLog
    progress: Progress
    env_key: str  # hashes the versions of everything that makes artifacts: every key starts here
    metric: TaskMetric  # data.metric: what every accuracy figure is
    loss: TaskLoss | None  # data.loss (or the metric's match): what training minimises
    tasks: Tasks | None = None  # with [cluster]: the run's independent work goes there as Ray tasks
