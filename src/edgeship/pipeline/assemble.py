"""The report's records, assembled from the stages' typed values: one Artifact per target, the
device facts, the fp32 ratios. The only place report records are built during a run."""

from __future__ import annotations

from edgeship.devices.profile import DeviceProfile
from edgeship.formats import spec_for
from edgeship.pipeline.plan import Device, Plan
from edgeship.pipeline.runfolder import RunFolder
from edgeship.pipeline.values import Converted, Exported, FloatModel, Source, Verified
from edgeship.quantize.float_layers import within
from edgeship.report.compare import latency_test
from edgeship.report.schema import Artifact, Benchmark, DeviceFacts, Int8Share, QuantizationDetails
from edgeship.report.findings import twin_benchmark
from edgeship.targets import Flow, Target


def device_facts(device: Device, host: dict) -> DeviceFacts:
    """`host`: the run's environment()["host"], for a profile whose facts are read from it."""
    profile: DeviceProfile = device.profile
    facts = profile.model_dump(mode="json", exclude={"benchmark"})
    facts["benchmark"] = device.settings.model_dump(mode="json")
    if profile.arch == "auto":
        facts.update(arch=host["arch"], cores=host["cores"], memory_mb=host["memory_mb"], cpu=host["cpu"])
    return DeviceFacts.model_validate(facts)


def artifact(target: Target, folder: RunFolder, failed: dict[str, str], source: Source | None,
             exported: Exported | None, verified: Verified | None,
             benchmarks: list[Benchmark]) -> Artifact:
    """What is known of one target's artifact, from every stage it reached."""
    record = Artifact(target=target.name, format=target.format.value, engine=target.engine,
                      precision=target.precision.value, flow=target.flow.value if target.flow else None,
                      status="failed" if target.name in failed else "ok",
                      error=failed.get(target.name, ""), benchmarks=benchmarks)
    if exported is not None:
        made = exported.artifact
        record.path = folder.relative(made.path)
        record.files = [folder.relative(f) for f in made.files]
        record.sha256, record.size_bytes = exported.sha256, made.size_bytes
        record.details = dict(made.details)
        quantization = source.quantization if source is not None else None
        if quantization is not None:
            record.details["quantization"] = quantization.model_dump(mode="json", exclude_none=True)
        if "int8_share" in record.details:
            record.int8_share = int8_share(record.details.pop("int8_share"), quantization)
    if verified is not None:
        record.accuracy, record.parity = verified.accuracy, verified.parity
    return record


def int8_share(measured: dict, quantization: QuantizationDetails | None) -> Int8Share:
    """The exporter's measured share, each float op with the reason the pipeline knows for it."""
    share = Int8Share.model_validate(measured)
    if quantization is None:
        return share
    reasons = {name: "kept float by the accuracy fallback" for name in quantization.float_layers or []}
    reasons.update({name: "named in the recipe's quantization.float_layers"
                    for name in quantization.float_layers_recipe or []})
    reasons.update(quantization.float_layers_required or {})
    otherwise = (f"dynamic quantization covers only {quantization.layers}"
                 if quantization.mode == "dynamic" else None)
    for op in share.float_ops:
        op.why = next((why for layer, why in reasons.items() if within(op.name, (layer,))), otherwise)
    return share


def attach_fp32_ratios(records: dict[str, Artifact]) -> None:
    """Sets each int8 benchmark's `vs_fp32`: its latency p50 and peak RSS over those of its fp32
    twin on the same device (> 1: int8 is slower or bigger), the median ratio's 95% interval from
    the raw samples and its verdict (slower, faster, no change). None where either was not
    measured."""
    artifacts = list(records.values())
    for record in artifacts:
        for bench in record.benchmarks:
            base = twin_benchmark(artifacts, record, bench)
            if base is None or not (bench.latency_ms and base.latency_ms and base.latency_ms.p50):
                continue
            rss = bench.peak_rss_mb / base.peak_rss_mb if bench.peak_rss_mb and base.peak_rss_mb else None
            test = latency_test(base, bench)
            bench.vs_fp32 = {"latency_p50_ratio": bench.latency_ms.p50 / base.latency_ms.p50,
                             "peak_rss_ratio": rss,
                             "latency_p50_ratio_ci95": [test.low, test.high] if test else None,
                             "latency": test.verdict if test else None}


def sources(plan: Plan, float_model: FloatModel, converted: dict[Flow, Converted],
            dynamic: dict[str, Source]) -> dict[str, Source]:
    """What each target's artifact is made from, in the plan's target order: the float model for
    fp32 targets, the converted model of its flow for static int8, its own for dynamic int8."""
    out = {}
    for t in plan.targets:
        if not t.is_int8:
            out[t.name] = Source(float_model.module, spec_for(t.format).export, "float model",
                                 float_model.logits, float_model.key)
        elif t.name in dynamic:
            out[t.name] = dynamic[t.name]
        elif t.flow in converted and t in plan.static:
            c = converted[t.flow]
            made = (f"converted PyTorch model ({t.flow.value})" if c.export is None else
                    f"float model with the {t.flow.value} weights (quantized after export)")
            out[t.name] = Source(c.module, c.export or spec_for(t.format).export, made, c.reference,
                                 c.key, c.quantization, int8_reference=c.export is None, remake=c.remake)
    return out
