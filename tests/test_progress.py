"""Progress from another process (a Ray task's QAT), shown by the driver as its own: the events a
Forwarded progress sends, replayed by Relayed into a real rich console."""

from __future__ import annotations

import io

from rich.console import Console

from edgeship.progress import Forwarded, Progress, Relayed


def _train(progress: Progress, label: str, steps: int) -> None:
    progress.log("starting")
    with progress.task(label, total=steps) as advance:
        for _ in range(steps):
            advance()


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=100), out


def test_in_a_log_a_forwarded_task_prints_the_lines_it_prints_here():
    here, here_out = _console(terminal=False)
    _train(Progress(here), "QAT fx-fbgemm", 7)
    there, there_out = _console(terminal=False)
    _train(Forwarded(Relayed(Progress(there)).show), "QAT fx-fbgemm", 7)
    assert there_out.getvalue() == here_out.getvalue() == "starting\n  QAT fx-fbgemm (7 steps)\n"


def test_on_a_terminal_the_driver_draws_the_tasks_bars_while_it_waits():
    console, out = _console(terminal=True)
    relayed = Relayed(Progress(console))
    forwarded = [Forwarded(relayed.show), Forwarded(relayed.show)]
    for f in forwarded:
        f.EVERY_SECONDS = 0.0  # every step sent
    with relayed.live():
        with forwarded[0].task("QAT fx-fbgemm", total=4) as a, forwarded[1].task("QAT ort-qdq", total=6) as b:
            for _ in range(3):
                a()
                b()
            assert relayed.bars == {"QAT fx-fbgemm": [3, 4], "QAT ort-qdq": [3, 6]}
            drawn = out.getvalue()
            assert "QAT fx-fbgemm" in drawn and "3/4" in drawn and "QAT ort-qdq" in drawn and "3/6" in drawn
    assert relayed.bars == {}  # both closed


def test_steps_travel_in_batches_and_none_is_lost():
    sent = []
    with Forwarded(sent.append).task("QAT pt2e-xnnpack", total=1000) as advance:
        for _ in range(1000):
            advance()
    steps = [e[2] for e in sent if e[0] == "advance"]
    assert sent[0] == ("open", "QAT pt2e-xnnpack", 1000) and sent[-1] == ("close", "QAT pt2e-xnnpack")
    assert sum(steps) == 1000 and len(steps) < 10  # not one message a step


def test_a_quiet_driver_shows_nothing_forwarded():
    console, out = _console(terminal=False)
    _train(Forwarded(Relayed(Progress(console, enabled=False)).show), "QAT fx-fbgemm", 3)
    assert out.getvalue() == ""
