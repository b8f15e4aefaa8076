"""cxr.progress: a Rich bar on a (fake) terminal, plain log lines elsewhere, nothing without a stream."""

from __future__ import annotations

import io
import re
import sys

import pytest

from cxr.progress import Progress, format_seconds

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> FakeTTY:
    """A wide, capable fake terminal, whatever TERM/COLUMNS the test run has."""
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "200")
    return FakeTTY()


def frames(stream: io.StringIO) -> list[str]:
    """Each redraw of the live bar, escape codes removed."""
    return [f.strip() for f in ANSI.sub("", stream.getvalue()).split("\r") if f.strip()]


def run_epoch(stream: io.StringIO | None, **kwargs: float) -> Progress:
    now = [0.0]
    bar = Progress(9, "xception finetune 3/9", stream, clock=lambda: now[0], **kwargs)  # type: ignore[arg-type]
    for _ in range(9):
        now[0] += 10.0
        bar.update(1, items=32, loss=0.5036, acc=0.84375, lr=9.76e-05)
    bar.close()
    return bar


def test_terminal_gets_a_rich_bar_with_description_count_time_rate_and_metrics(terminal: FakeTTY) -> None:
    bar = run_epoch(terminal)
    assert bar.tty
    shown = frames(terminal)
    assert "━" in shown[1] and "[=" not in terminal.getvalue()  # Rich's bar, not the plain one
    assert shown[1].startswith("xception finetune 3/9 ")
    assert "1/9 00:10<01:20 3.2 img/s loss 0.5036 acc 0.8438 lr 9.76e-05" in shown[1]
    assert "9/9 01:30<00:00 3.2 img/s loss 0.5036 acc 0.8438 lr 9.76e-05" in shown[-1]
    raw = terminal.getvalue()
    assert raw.endswith("\n\x1b[?25h")  # the final bar stays on its line and the cursor comes back


def test_terminal_bar_is_redrawn_at_most_every_min_interval(terminal: FakeTTY) -> None:
    run_epoch(terminal, min_interval=25.0)
    counts = [re.search(r" (\d)/9 \d\d:", f).group(1) for f in frames(terminal)]  # type: ignore[union-attr]
    assert counts == ["0", "1", "4", "7", "9"]  # start, t=10/40/70 s, close


def test_terminal_bar_leaves_stdout_alone(terminal: FakeTTY, capsys: pytest.CaptureFixture[str]) -> None:
    stdout = sys.stdout
    bar = Progress(4, "scan", terminal)
    bar.update(2)
    assert sys.stdout is stdout  # not redirected while live: scan rows keep going to stdout
    bar.close()
    assert capsys.readouterr() == ("", "")
    assert "2/4" in frames(terminal)[-1]


def test_plain_lines_off_a_terminal_carry_the_same_figures() -> None:
    log = io.StringIO()
    bar = run_epoch(log, log_interval=20.0)
    assert not bar.tty
    assert log.getvalue().splitlines() == [
        "xception finetune 3/9 [==>                 ] 1/9 00:10<01:20 3.2 img/s loss 0.5036 acc 0.8438 lr 9.76e-05",
        "xception finetune 3/9 [======>             ] 3/9 00:30<01:00 3.2 img/s loss 0.5036 acc 0.8438 lr 9.76e-05",
        "xception finetune 3/9 [===========>        ] 5/9 00:50<00:40 3.2 img/s loss 0.5036 acc 0.8438 lr 9.76e-05",
        "xception finetune 3/9 [===============>    ] 7/9 01:10<00:20 3.2 img/s loss 0.5036 acc 0.8438 lr 9.76e-05",
        "xception finetune 3/9 [====================] 9/9 01:30<00:00 3.2 img/s loss 0.5036 acc 0.8438 lr 9.76e-05",
    ]


def test_dumb_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    stream = FakeTTY()
    bar = Progress(2, "scan", stream, clock=lambda: 1.0)
    bar.update(2)
    bar.close(acc=0.5)
    assert not bar.tty
    assert stream.getvalue() == "scan [====================] 2/2 00:00<00:00 acc 0.5000\n"


@pytest.mark.parametrize("tty", [True, False])
def test_close_is_idempotent_and_later_updates_are_silent(tty: bool, terminal: FakeTTY) -> None:
    stream = terminal if tty else io.StringIO()
    bar = Progress(3, "val", stream, min_interval=0.0, log_interval=0.0)
    bar.update(1)
    bar.close(loss=0.25)
    written = stream.getvalue()
    assert "val" in written and "loss 0.2500" in ANSI.sub("", written)
    bar.close(loss=9.0)
    bar.update(1)
    assert stream.getvalue() == written


def test_zero_total_in_both_modes(terminal: FakeTTY) -> None:
    log = io.StringIO()
    Progress(0, "scan", log, clock=lambda: 0.0).close()
    assert log.getvalue() == "scan [====================] 0/0 00:00<00:00\n"
    bar = Progress(-3, "scan", terminal)
    bar.close()
    assert bar.total == 0 and "scan" in frames(terminal)[-1] and "0/0" in frames(terminal)[-1]


def test_no_stream_shows_nothing() -> None:
    bar = Progress(5, "scan", None, min_interval=0.0, log_interval=0.0)
    bar.update(5, loss=0.1)
    bar.close()
    assert not bar.tty and bar.done == 5 and bar.items == 5


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (-1, 9.6, 87, 3600 + 62)] == ["00:00", "00:10", "01:27", "1:01:02"]
