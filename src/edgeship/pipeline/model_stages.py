"""The stages that change the model: prune, sensitivity and fallback, calibrate, QAT, convert, and
dynamic quantization. Part of Pipeline (run.py); each stage reuses the stage cache when its key
matches and stores what it made."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from edgeship.data import Arrays, Splits, stack
from edgeship.errors import UserError
from edgeship.pipeline import dynamic
from edgeship.pipeline.cache import digest
from edgeship.pipeline.distributed_qat import finetune_distributed
from edgeship.pipeline.evaluate import logits, top1
from edgeship.pipeline.flows import QuantSettings, flow_for, quantized_engine
from edgeship.pipeline.op_support import required_float_layers
from edgeship.pipeline.prune import apply_masks, make_permanent, sparsity
from edgeship.pipeline.quantize import calibrate, finetune
from edgeship.pipeline.sensitivity import PtqProbe, fallback, sensitivity
from edgeship.pipeline.training import train
from edgeship.targets import Flow, Format, Target


def describe(e: BaseException, limit: int = 600) -> str:
    """The first lines of an exception: they name the op or the line that failed."""
    text = " ".join(line.strip() for line in str(e).strip().splitlines()[:4] if line.strip())
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[:limit] + "…"


class ModelStages:
    # Provided by Pipeline: recipe, targets, report, log, progress, cache, float_key, sources,
    # source_keys, quantization, fail().

    def settings(self) -> QuantSettings:
        q = self.recipe.quantization
        return QuantSettings(observer=q.observer, per_channel=q.per_channel)

    def int8_flows(self) -> list[Flow]:
        """The flows of the statically quantized targets: each is calibrated once."""
        return list(dict.fromkeys(t.flow for t in self.targets
                                  if t.is_int8 and self.recipe.mode(t.name) == "static"))

    def dynamic_targets(self) -> list[Target]:
        return [t for t in self.targets if t.is_int8 and self.recipe.mode(t.name) == "dynamic"]

    def prune(self, model: nn.Module, splits: Splits, test: Arrays) -> None:
        config, recipe = self.recipe.prune, self.recipe
        key = digest("prune", self.float_key, config)
        with self.log.stage("prune") as notes:
            cached, state = self.cache.load_json("prune", key), self.cache.load_state("prune", key)
            if cached is not None and state is not None:
                model.load_state_dict(state)
                self.report.prune, notes.cached = cached, True
            else:
                names = apply_masks(model, config)
                pruned_accuracy = top1(logits(model, test), test.labels)
                if config.finetune_epochs:
                    torch.manual_seed(recipe.seed)
                    train(model, splits.train, optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
                          epochs=config.finetune_epochs, batch_size=recipe.data.batch_size,
                          seed=recipe.seed, progress=self.progress, label="fine-tune after pruning")
                    model.eval()
                make_permanent(model, names)
                self.report.prune = {"method": config.method, "amount": config.amount,
                                     "sparsity": sparsity(model, names),
                                     "accuracy_before": self.report.float.accuracy,
                                     "accuracy_pruned": pruned_accuracy,
                                     "accuracy_finetuned": top1(logits(model, test), test.labels)}
                self.cache.store_state("prune", key, model)
                self.cache.store_json("prune", key, self.report.prune)
            # Everything after this stage compares with the pruned float model.
            self.report.float.accuracy = self.report.prune["accuracy_finetuned"]
            self.float_key = key
            notes.append(f"sparsity {self.report.prune['sparsity']['overall']:.2f}, top-1 "
                         f"{self.report.prune['accuracy_pruned']:.4f} pruned, "
                         f"{self.report.prune['accuracy_finetuned']:.4f} fine-tuned")

    def analyse(self, model: nn.Module, splits: Splits, examples: tuple) -> dict[Flow, list[str]]:
        """Sensitivity per layer and accuracy-aware fallback; returns the float layers per flow."""
        q = self.recipe.quantization
        flows = self.int8_flows()
        if not (q.sensitivity or q.fallback) or not flows:
            return {}
        key = digest("analyse", self.float_key, q, flows, self.recipe.data.batch_size)
        with self.log.stage("sensitivity") as notes:
            found = self.cache.load_json("analyse", key)
            notes.cached = found is not None
            if found is None:
                found = self._analyse(model, splits, examples, flows)
                self.cache.store_json("analyse", key, found)
            self.report.sensitivity, self.report.fallback = found["sensitivity"], found["fallback"]
            for result in found["fallback"]:
                met = "met" if result["met"] else "NOT met, best kept"
                notes.append(f"{result['flow']}: float {result['float_layers'] or 'none'}, drop "
                             f"{result['drop_points']:.2f} pts ({met})")
        return {Flow(r["flow"]): r["float_layers"] for r in found["fallback"]}

    def _analyse(self, model: nn.Module, splits: Splits, examples: tuple, flows: list[Flow]) -> dict:
        q = self.recipe.quantization
        probe = PtqProbe(model, examples, splits.calibration, stack(splits.calibration),
                         q.calibration_batches, self.recipe.data.batch_size)
        float_accuracy = probe.float_accuracy()
        found: dict = {"sensitivity": [], "fallback": []}
        for flow in flows:
            rows = sensitivity(probe, flow, self.settings(), float_accuracy)
            found["sensitivity"].append({"flow": flow.value, "split": "calibration",
                                         "float_accuracy": float_accuracy, "rows": rows})
            if q.fallback is not None:
                found["fallback"].append(fallback(
                    probe, flow, self.settings(), float_accuracy, [r["layer"] for r in rows],
                    q.fallback.max_accuracy_drop, q.fallback.max_float_layers))
        return found

    def _guarded(self, stage: str, flow: Flow, work, prepared: dict) -> None:
        try:
            work()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - this flow fails, the others go on
            prepared.pop(flow, None)
            for t in self.targets:
                if t.flow is flow and self.recipe.mode(t.name) == "static":
                    self.fail(t, f"{stage} ({flow.value}): {describe(e)}")

    def quantize(self, model: nn.Module, splits: Splits, examples: tuple, test: Arrays,
                 float_layers: dict[Flow, list[str]]) -> None:
        """Calibrate, fine-tune and convert once per flow, for the statically quantized targets.
        A flow whose calibrated (and fine-tuned) state is in the cache skips both."""
        recipe, q = self.recipe, self.recipe.quantization
        flows = self.int8_flows()
        if not flows:
            self.log.skipped("calibrate", "no statically quantized int8 target")
            return
        # Layers a flow cannot make int8 for its target stay float (mixed precision), said in
        # the report with the reason.
        required = {f: required_float_layers(model, f) for f in flows}
        quant_flows = {f: flow_for(f, self.settings().with_float_layers(
                           {*float_layers.get(f, ()), *required[f]})) for f in flows}
        keys = {f: digest("quantize", self.float_key, f, sorted(qf.settings.float_layers), q,
                          recipe.data.batch_size, recipe.seed) for f, qf in quant_flows.items()}
        prepared: dict[Flow, nn.Module] = {}
        with self.log.stage("calibrate") as notes:
            for f, qf in quant_flows.items():
                def work(f=f, qf=qf):
                    captured = qf.capture(model, examples, qat=q.qat.enabled)
                    state = self.cache.load_state("quantize", keys[f])
                    if state is not None:
                        module = qf.prepare_captured(captured, examples, qat=q.qat.enabled)
                        module.load_state_dict(state)
                        qf.set_eval(module)
                        notes.append(f"{f.value} reused")
                    else:
                        module = calibrate(qf, model, examples, splits.calibration,
                                           batches=q.calibration_batches, batch_size=recipe.data.batch_size,
                                           qat=q.qat.enabled, progress=self.progress, captured=captured)
                        self.fresh.add(f)
                    prepared[f] = module
                self._guarded("calibrate", f, work, prepared)
            notes.cached = bool(prepared) and not (self.fresh & set(prepared))
        if not q.qat.enabled:
            self.log.skipped("qat", "quantization.qat.enabled = false: post-training quantization")
        else:
            with self.log.stage("qat") as notes:
                for f in [f for f in prepared if f in self.fresh]:
                    def work(f=f):
                        if q.qat.distributed is None:
                            loss = finetune(quant_flows[f], prepared[f], splits.train, qat=q.qat,
                                            batch_size=recipe.data.batch_size, seed=recipe.seed,
                                            teacher=model, progress=self.progress)
                            notes.append(f"{f.value} loss {loss:.4f}")
                            return
                        run = finetune_distributed(quant_flows[f], prepared[f], model, examples,
                                                   recipe, log=self.progress.log)
                        self.distributed_runs[f] = run
                        notes.append(f"{f.value} loss {run['loss']:.4f} on {run['processes']} "
                                     f"processes ({run['backend']})")
                    self._guarded("qat", f, work, prepared)
                notes.cached = bool(prepared) and not (self.fresh & set(prepared))
        for f in [f for f in prepared if f in self.fresh]:
            self.cache.store_state("quantize", keys[f], prepared[f])
            if f in self.distributed_runs:
                self.cache.store_json("qat-distributed", keys[f], self.distributed_runs[f])
        with self.log.stage("convert") as notes:
            for f in list(prepared):
                def work(f=f):
                    qf = quant_flows[f]
                    converted = qf.convert(prepared[f])
                    with qf.engine():
                        ref = logits(converted, test)
                    how = {"mode": "static", "qat": q.qat.enabled, "per_channel": q.per_channel,
                           "observer": "fake-quant" if q.qat.enabled else (q.observer or "histogram"),
                           "float_layers": sorted(qf.settings.float_layers),
                           "float_layers_required": required[f]}
                    if q.qat.enabled and q.qat.distributed is not None:
                        # From this run or, when the state came from the cache, as the recipe says.
                        how["qat_distributed"] = self.distributed_runs.get(f) or \
                            self.cache.load_json("qat-distributed", keys[f])
                    for t in self.targets:
                        if t.flow is f and recipe.mode(t.name) == "static":
                            self.sources[t.name] = (converted, f"converted PyTorch model ({f.value})", ref)
                            self.source_keys[t.name] = keys[f]
                            self.quantization[t.name] = how
                    notes.append(f"{f.value} top-1 {top1(ref, test.labels):.4f} in PyTorch")
                self._guarded("convert", f, work, prepared)

    def quantize_dynamic(self, model: nn.Module, examples: tuple, test: Arrays,
                         float_logits: np.ndarray) -> None:
        targets = self.dynamic_targets()
        if not targets:
            return
        with self.log.stage("quantize-dynamic") as notes:
            for t in targets:
                try:
                    module = dynamic.quantize(t, model, examples)
                    if module is None:  # quantized by its runtime's toolchain after export
                        self.sources[t.name] = (None, "float model (quantized after export)", float_logits)
                    else:
                        with quantized_engine(t.engine) if t.format is Format.TORCHSCRIPT else nullcontext():
                            ref = logits(module, test)
                        self.sources[t.name] = (module, "dynamically quantized PyTorch model", ref)
                        notes.append(f"{t.name} top-1 {top1(ref, test.labels):.4f} in PyTorch")
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001 - this target fails, the others go on
                    self.fail(t, f"quantize-dynamic: {describe(e)}")
                    continue
                self.source_keys[t.name] = digest("dynamic", self.float_key, t.name,
                                                  self.recipe.quantization.per_channel)
                self.quantization[t.name] = {"mode": "dynamic", "qat": False,
                                             "per_channel": self.recipe.quantization.per_channel,
                                             "layers": dynamic.LAYERS[t.format]}
