"""SIGKILL an edgeship run at random moments and check that the same command resumes it cleanly.

    python scripts/kill_resume.py                    # `edgeship demo`, ten kills
    python scripts/kill_resume.py --kills 2 --recipe my.toml --work /tmp/kr

First an uninterrupted reference run (its duration sets the range of the kill delays, drawn
uniformly over it). Then, per kill: a fresh run folder, the command started, SIGKILLed after the
delay, and the same command run again to its end. Each resume must exit with the reference's
code (0 for the demo; 1 when a budget of the given recipe fails in every run alike) with ONNX and
ExecuTorch artifacts byte-identical to the reference (sha256, external data included), the same
TorchScript answers (accuracy and parity on the test split, from report.json: TorchScript
archives are not byte-deterministic), no process of the killed run left alive, and no temporary
folder left: `.edgeship-tmp-*` in the run folder, `edgeship-*` in the temporary directory (the
runs get a private $TMPDIR, so other programs' files are not counted). Exit code 0 when every
kill passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

BYTE_IDENTICAL_SUFFIXES = (".onnx", ".data", ".pte")  # TorchScript .pt: compared by answers


@dataclass
class Kill:
    number: int
    delay_seconds: float
    stage: str  # the stage the killed run was in, from its progress on stderr
    survivors: list[int]  # pids of the killed run's processes still alive after it
    resume_code: int
    resume_seconds: float
    identical: bool
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def command(args: argparse.Namespace, out: Path) -> list[str]:
    edgeship = [sys.executable, "-m", "edgeship"]
    if args.recipe:
        return edgeship + ["run", str(args.recipe), "--out", str(out)]
    return edgeship + ["demo", "--out", str(out)]


def run_to_end(argv: list[str], env: dict, log: Path) -> tuple[int, float]:
    started = time.monotonic()
    with log.open("w") as err:
        code = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=err, env=env).returncode
    return code, time.monotonic() - started


def last_stage(log: Path) -> str:
    """The last stage the progress log announced (`▸ calibrate`), or what it was doing."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    stages = [line.removeprefix("▸ ").strip() for line in lines if line.startswith("▸ ")]
    return stages[-1] if stages else "start-up"


def kill_after(argv: list[str], env: dict, delay_seconds: float, log: Path) -> tuple[str, list[int]]:
    """Starts the command, SIGKILLs it after the delay (if it still runs); returns the stage it
    was in and the pids of its processes that outlived it (given a few seconds to go)."""
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            proc.wait(timeout=delay_seconds)
            return "finished before the kill", []
        except subprocess.TimeoutExpired:
            pass
        family = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10.0
    alive = family
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    for p in alive:  # leave nothing behind on this machine either
        p.kill()
    return last_stage(log), [p.pid for p in alive]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def byte_identical_files(folder: Path) -> dict[str, str]:
    artifacts = folder / "artifacts"
    return {p.name: sha256(p) for p in sorted(artifacts.iterdir())
            if p.is_file() and p.name.endswith(BYTE_IDENTICAL_SUFFIXES)} if artifacts.is_dir() else {}


def answers(folder: Path) -> dict[str, tuple]:
    """What each TorchScript artifact answered on the test split: accuracy and parity."""
    report = json.loads((folder / "report.json").read_text())
    return {a["target"]: (a["status"], a["accuracy"], json.dumps(a["parity"], sort_keys=True))
            for a in report["artifacts"] if a["format"] == "torchscript"}


def compare(reference: Path, resumed: Path) -> list[str]:
    problems = []
    mine, theirs = byte_identical_files(resumed), byte_identical_files(reference)
    if mine != theirs:
        differ = sorted(n for n in {*mine, *theirs} if mine.get(n) != theirs.get(n))
        problems.append(f"artifacts differ from the reference: {', '.join(differ)}")
    if not (resumed / "report.json").is_file():
        return problems + ["no report.json"]
    if answers(resumed) != answers(reference):
        problems.append("TorchScript answers differ from the reference")
    return problems


def leftovers(out: Path, tmpdir: Path) -> list[str]:
    found = [p.name for p in out.glob(".edgeship-tmp-*")] + [p.name for p in tmpdir.glob("edgeship-*")]
    return sorted(found)


def one_kill(number: int, args: argparse.Namespace, work: Path, reference: Path, env: dict,
             delay_seconds: float, expected_code: int) -> Kill:
    out = work / f"kill-{number}"
    shutil.rmtree(out, ignore_errors=True)
    tmpdir = Path(env["TMPDIR"])
    argv = command(args, out)
    stage, survivors = kill_after(argv, env, delay_seconds, work / f"kill-{number}.killed.log")
    left_by_kill = sorted(p.name for p in tmpdir.glob("edgeship-*"))
    code, seconds = run_to_end(argv, env, work / f"kill-{number}.resume.log")
    problems = [f"resume exited {code}, the reference {expected_code}"] if code != expected_code else []
    if survivors:
        problems.append(f"processes outlived the killed run: {survivors}")
    problems += compare(reference, out)
    left = leftovers(out, tmpdir)
    if left or left_by_kill:
        problems.append(f"temporary folders left: {', '.join(sorted({*left, *left_by_kill}))}")
    for p in tmpdir.iterdir():  # each kill starts with a clean temporary directory
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
    identical = not any(p.startswith(("artifacts differ", "TorchScript", "no report")) for p in problems)
    return Kill(number, delay_seconds, stage, survivors, code, seconds, identical, problems)


def table(kills: list[Kill]) -> str:
    rows = [("kill", "delay s", "stage when killed", "resume exit", "resume s", "identical", "result")]
    rows += [(str(k.number), f"{k.delay_seconds:.1f}", k.stage, str(k.resume_code),
              f"{k.resume_seconds:.1f}", "yes" if k.identical else "no",
              "ok" if k.passed else "; ".join(k.problems)) for k in kills]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="how many kills (default 10)")
    parser.add_argument("--recipe", type=Path, help="a recipe to run instead of the demo")
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a new temporary one)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill delays")
    parser.add_argument("--reference", type=Path, help="an uninterrupted run folder of the same "
                        "command to compare with (its report's wall_seconds sets the delays)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    tmpdir = work / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    if args.reference:
        reference = args.reference
        report = json.loads((reference / "report.json").read_text())
        duration, code = report["wall_seconds"], report["exit_code"]
    else:
        reference = work / "reference"
        shutil.rmtree(reference, ignore_errors=True)
        code, duration = run_to_end(command(args, reference), env, work / "reference.log")
    if code not in (0, 1):  # 0 passed, 1 a budget failed: anything else is no reference
        print(f"the uninterrupted reference run exited {code}; see {work / 'reference.log'}")
        return 1
    print(f"reference: {reference}, exit code {code}, {duration:.1f} s; runs in {work}", flush=True)
    rng = random.Random(args.seed)
    kills = []
    for number in range(1, args.kills + 1):
        kills.append(one_kill(number, args, work, reference, env, rng.uniform(0, duration), code))
        print(table(kills[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(kills))
    passed = sum(k.passed for k in kills)
    print(f"\n{passed} of {len(kills)} kills resumed cleanly")
    return 0 if passed == len(kills) else 1


if __name__ == "__main__":
    sys.exit(main())
