"""The float model's stages: its accuracy on the test split, and pruning before quantization."""

from __future__ import annotations

import torch

from edgeship.pipeline.cache import digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.values import FloatModel, Loaded
from edgeship.quantize.evaluate import logits, top1
from edgeship.quantize.prune import apply_masks, make_permanent, sparsity
from edgeship.quantize.training import train
from edgeship.report.schema import PruneResult


def evaluate_float(ctx: RunContext, loaded: Loaded) -> FloatModel:
    with ctx.log.stage("evaluate-float") as notes:
        answers = logits(loaded.model, loaded.test)
        accuracy = top1(answers, loaded.test.labels)
        notes.append(f"top-1 {accuracy:.4f} on {len(loaded.test)} test samples")
    return FloatModel(loaded.model, loaded.key, accuracy, answers)


def prune(ctx: RunContext, loaded: Loaded, unpruned: FloatModel) -> FloatModel:
    """Prunes the float model in place; everything after compares with the pruned model."""
    key = digest("prune", unpruned.key, ctx.recipe.prune)
    model = unpruned.module
    with ctx.log.stage("prune") as notes:
        cached, state = ctx.cache.load_json("prune", key), ctx.cache.load_state("prune", key)
        if cached is not None and state is not None:
            model.load_state_dict(state)
            result, notes.cached = PruneResult.model_validate(cached), True
        else:
            result = _prune(ctx, loaded, unpruned)
            ctx.cache.store_state("prune", key, model)
            ctx.cache.store_json("prune", key, result.model_dump(mode="json"))
        notes.append(f"sparsity {result.sparsity.overall:.2f}, top-1 {result.accuracy_pruned:.4f} "
                     f"pruned, {result.accuracy_finetuned:.4f} fine-tuned")
    return FloatModel(model, key, result.accuracy_finetuned, logits(model, loaded.test), result)


def _prune(ctx: RunContext, loaded: Loaded, unpruned: FloatModel) -> PruneResult:
    config, recipe, model, test = ctx.recipe.prune, ctx.recipe, unpruned.module, loaded.test
    names = apply_masks(model, config)
    pruned_accuracy = top1(logits(model, test), test.labels)
    if config.finetune_epochs:
        torch.manual_seed(recipe.seed)
        train(model, loaded.splits.train, optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
              epochs=config.finetune_epochs, batch_size=recipe.data.batch_size, seed=recipe.seed,
              progress=ctx.progress, label="fine-tune after pruning")
        model.eval()
    make_permanent(model, names)
    return PruneResult(method=config.method, amount=config.amount, sparsity=sparsity(model, names),
                       accuracy_before=unpruned.accuracy, accuracy_pruned=pruned_accuracy,
                       accuracy_finetuned=top1(logits(model, test), test.labels))
