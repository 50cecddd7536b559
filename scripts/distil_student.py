"""A student with half its teacher's channels, trained with and without the teacher (issue 11,
item 7's figure).

    .venv/bin/python scripts/distil_student.py [--work /tmp/distil] [--limit 300]

The teacher, a digits CNN of width 32, is trained here for 8 epochs and saved as a state_dict.
Then `edgeship.run` twice on a width-16 student (default settings otherwise, torchscript-fbgemm,
QAT on for 2 epochs, no devices): once without a teacher, once with `model.train.distillation`
and `quantization.qat.distillation` naming the teacher and its weights. Prints float and int8
top-1 of each; `--limit` keeps that many images of each split (a student short of data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import edgeship
from edgeship.environment import environment
from edgeship.examples import digits
from edgeship.progress import Progress
from edgeship.quantize.evaluate import logits, top1
from edgeship.data import stack
from edgeship.quantize.training import train
from edgeship.recipe import parse_recipe


def teacher(folder: Path, limit: int | None) -> tuple[Path, float]:
    torch.manual_seed(0)
    model, splits = digits.cnn(width=32), digits.splits(limit=limit)
    train(model, splits.train, optimizer=torch.optim.Adam(model.parameters(), lr=0.01), epochs=8,
          batch_size=64, seed=0, progress=Progress(enabled=False), label="teacher")
    path = folder / "teacher.pt"
    torch.save(model.state_dict(), path)
    test = stack(splits.test)
    return path, top1(logits(model.eval(), test), test.labels)


def recipe(weights: Path | None, limit: int | None) -> dict:
    spec = {"factory": "edgeship.examples.digits:cnn", "kwargs": {"width": 32}, "weights": str(weights)}
    distil = {"teacher": spec} if weights else None
    return {
        "name": "student-distilled" if weights else "student", "seed": 0,
        "targets": ["torchscript-fbgemm"], "fp32_twins": False, "devices": [],
        "model": {"factory": "edgeship.examples.digits:cnn", "kwargs": {"width": 16},
                  "example_inputs": [{"shape": [1, 1, 8, 8]}],
                  "train": {"epochs": 8, "lr": 0.01, **({"distillation": distil} if distil else {})}},
        "data": {"factory": "edgeship.examples.digits:splits", "kwargs": {"limit": limit}},
        "quantization": {"qat": {"enabled": True, "epochs": 2, **({"distillation": distil} if distil else {})}},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeship-distil"))
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    weights, teacher_top1 = teacher(args.work, args.limit)
    print(f"teacher (width 32): float top-1 {teacher_top1:.4f}")
    for with_teacher in (None, weights):
        data = recipe(with_teacher, args.limit)
        report = edgeship.run(parse_recipe(data, data["name"], args.work), args.work / data["name"],
                              force=True, quiet=True)
        (int8,) = report.artifacts
        print(f"student (width 16), {'distilled' if with_teacher else 'no teacher'}: float top-1 "
              f"{report.float.accuracy:.4f}, torchscript-fbgemm int8 top-1 {int8.accuracy:.4f}")
    host = environment()["host"]
    print(f"{host['cpu']}; int8 ISA flags: {', '.join(host['int8_isa']) or 'none'}; "
          f"limit {args.limit or 'none'} per split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
