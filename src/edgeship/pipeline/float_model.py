"""The float model's stages: its accuracy on the test split, and pruning before quantization."""

from __future__ import annotations

import numpy as np
import torch

from edgeship.pipeline.cache import digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.values import FloatModel, Loaded
from edgeship.metrics import TaskMetric
from edgeship.quantize.evaluate import logits
from edgeship.quantize.parametrized import weights_baked
from edgeship.quantize.prune import apply_masks, make_permanent, sparsity
from edgeship.quantize.training import train
from edgeship.report.schema import PruneResult


def evaluate_float(ctx: RunContext, loaded: Loaded) -> FloatModel:
    with ctx.log.stage("evaluate-float") as notes:
        baked = weights_baked(loaded.model.eval())  # trained: every later stage needs only the weights
        if baked:
            notes.append(f"parametrized weights baked: {', '.join(baked)}")
        answers = logits(loaded.model, loaded.test)
        accuracy = ctx.metric.score(answers, loaded.test.labels)
        notes.append(f"{ctx.metric.said(accuracy)} on {len(loaded.test)} test samples")
        trains = bool(ctx.recipe.model.train or ctx.plan.qat)
        warning = not_learning(ctx.metric, accuracy, answers, loaded.test.labels) or \
            loss_not_falling(loaded.epoch_losses) or \
            probabilities_trained(answers, ctx.loss.name if ctx.loss and trains else None)
        if warning:  # said before any quantization, which would otherwise get the blame
            ctx.progress.log(f"warning: {warning}", style="yellow")
    return FloatModel(loaded.model, loaded.key, accuracy, answers, warning=warning)


# Near chance: within a tenth of the way from chance to a perfect score. Chance is the better of
# a uniform guess and always answering the test split's most frequent class (imbalanced data).
NEAR_CHANCE = 0.1


_UNTRAINED = ("it has not learned the task, so its int8 artifacts cannot be judged: train it "
              "(model.train) or load trained weights")


def not_learning(metric: TaskMetric, accuracy: float, answers: np.ndarray, labels: np.ndarray) -> str | None:
    """A line when the float model scores near chance on the test split, else None (a metric
    function has no chance level edgeship knows)."""
    if metric.name == "mse":
        return _regression_near_chance(accuracy, labels)
    if metric.name == "perplexity":
        return _lm_near_chance(accuracy, answers.shape[-1])
    if metric.name != "top1":
        return None
    classes = answers.shape[1]
    majority = float(np.bincount(labels).max() / len(labels))
    chance = max(1.0 / classes, majority)
    if accuracy > chance + NEAR_CHANCE * (1.0 - chance):
        return None
    guess = "always answering its most frequent class" if majority > 1.0 / classes else \
        f"a uniform guess among its {classes} classes"
    return (f"the float model answers near chance: top-1 {accuracy:.4f} on the test split, where "
            f"{guess} scores {chance:.4f}; {_UNTRAINED}")


def _regression_near_chance(mse: float, labels: np.ndarray) -> str | None:
    """Near chance: within a tenth of answering every sample with the labels' mean."""
    variance = float(labels.astype(np.float64).var())
    if mse < (1 - NEAR_CHANCE) * variance:
        return None
    return (f"the float model answers near chance: mse {mse:.4g} on the test split, where "
            f"answering the labels' mean scores {variance:.4g}; {_UNTRAINED}")


def _lm_near_chance(perplexity: float, vocabulary: int) -> str | None:
    """Near chance: within a tenth of a uniform guess over the vocabulary."""
    if perplexity < (1 - NEAR_CHANCE) * vocabulary:
        return None
    return (f"the float model answers near chance: perplexity {perplexity:.4g} on the test split, "
            f"where a uniform guess among its {vocabulary} tokens scores {vocabulary}; {_UNTRAINED}")


def probabilities_trained(answers: np.ndarray, loss: str | None) -> str | None:
    """A line when the model answers probabilities (every row of its outputs >= 0 and summing to
    1, a softmax in forward) and `loss`, what training minimises, is cross_entropy, which takes
    logits: it applies log-softmax itself, so training fits softmax(probabilities), whose
    gradients are a fraction of the logits' (a float model ended training at loss 1.50 so).

    >>> p = np.full((4, 10), 0.1, dtype=np.float32)
    >>> probabilities_trained(p, "cross_entropy") is not None, probabilities_trained(p, None)
    (True, None)
    >>> probabilities_trained(np.log(p), "cross_entropy")"""
    if loss != "cross_entropy" or answers.ndim != 2 or answers.shape[1] < 2:
        return None
    if answers.min() < 0 or not np.allclose(answers.sum(axis=1), 1.0, atol=1e-3):
        return None
    return ("the model answers probabilities (its outputs are >= 0 and sum to 1 per sample), and "
            "cross_entropy, which training and QAT minimise, takes logits: it applies log-softmax "
            "itself, so the model trains slowly; return the logits from forward() and apply softmax "
            "after the artifact (top-1 is the same either way)")


def loss_not_falling(losses: tuple[float, ...]) -> str | None:
    """A line when float training's last epoch ended no lower in loss than its first, else None.

    >>> loss_not_falling((2.30, 2.31)) is not None, loss_not_falling((2.30, 0.50)), loss_not_falling((2.3,))
    (True, None, None)
    """
    if len(losses) < 2 or losses[-1] < losses[0]:
        return None
    return (f"the float model's training loss did not fall: {losses[0]:.4f} in epoch 1, "
            f"{losses[-1]:.4f} in epoch {len(losses)}; it is not learning the task (try another "
            f"model.train.lr), so its int8 artifacts cannot be judged")


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
        notes.append(f"sparsity {result.sparsity.overall:.2f}, {ctx.metric.said(result.accuracy_pruned)} "
                     f"pruned, {ctx.metric.format(result.accuracy_finetuned)} fine-tuned")
    answers = logits(model, loaded.test)
    return FloatModel(model, key, result.accuracy_finetuned, answers, result,
                      not_learning(ctx.metric, result.accuracy_finetuned, answers, loaded.test.labels))


def _prune(ctx: RunContext, loaded: Loaded, unpruned: FloatModel) -> PruneResult:
    config, recipe, model, test = ctx.recipe.prune, ctx.recipe, unpruned.module, loaded.test
    names = apply_masks(model, config)
    pruned_accuracy = ctx.metric.score(logits(model, test), test.labels)
    if config.finetune_epochs:
        torch.manual_seed(recipe.seed)
        train(model, loaded.splits.train, optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
              epochs=config.finetune_epochs, batch_size=recipe.data.batch_size, seed=recipe.seed,
              progress=ctx.progress, label="fine-tune after pruning", loss_fn=ctx.loss)
        model.eval()
    make_permanent(model, names)
    return PruneResult(method=config.method, amount=config.amount, sparsity=sparsity(model, names),
                       accuracy_before=unpruned.accuracy, accuracy_pruned=pruned_accuracy,
                       accuracy_finetuned=ctx.metric.score(logits(model, test), test.labels))


def batch_norms(module: torch.nn.Module) -> int:
    """The batch-norm layers of `module`: whether stale running statistics can explain a
    fine-tune that beats it (report/findings.py, int8_better)."""
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
