"""run_commands (no AWS): streaming order, the order timeout, first failure, masking, the log cap."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from handlers.execution_engine import schema
from handlers.execution_engine.worker import (
    MASK,
    LogCollector,
    Masker,
    RunOutcome,
    base_environment,
    run_commands,
)

PATH = os.environ.get("PATH", "/usr/bin:/bin")


class Lines:
    """An ``on_line`` that records each line with the time it arrived."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []

    def __call__(self, line: str) -> None:
        self.lines.append((time.monotonic() - self.started, line))

    @property
    def texts(self) -> list[str]:
        return [text for _, text in self.lines]

    def arrival(self, text: str) -> float:
        return next(at for at, line in self.lines if line == text)


def run(cmds: list[str], tmp_path: Path, *, timeout: float = 20, **kwargs: Any) -> tuple[RunOutcome, Lines]:
    lines = Lines()
    env = {"PATH": PATH, "HOME": str(tmp_path)}
    outcome = run_commands(cmds, tmp_path, env, timeout, lines, **kwargs)
    return outcome, lines


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie (nobody reaped it yet in this container) is dead


def test_lines_arrive_as_they_are_written_in_order_with_stderr_merged(tmp_path: Path) -> None:
    outcome, lines = run(["echo first; echo to-stderr >&2; sleep 1.2; echo second", "echo third"], tmp_path)

    assert outcome.succeeded and outcome.exit_code == 0 and outcome.reason is None
    assert lines.texts == [
        "$ echo first; echo to-stderr >&2; sleep 1.2; echo second",
        "first",
        "to-stderr",
        "second",
        "$ echo third",
        "third",
    ]
    # Streamed, not buffered until the command ends: "first" came about a second before "second".
    assert lines.arrival("second") - lines.arrival("first") > 0.8
    assert outcome.log == "".join(text + "\n" for text in lines.texts)


def test_commands_run_in_cwd_with_exactly_the_given_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_PARENT_ONLY", "leaked")
    (tmp_path / "data.txt").write_text("from the code directory\n")
    lines = Lines()
    outcome = run_commands(
        ["cat data.txt", 'echo "$ORDER_VAR|${WORKER_PARENT_ONLY:-absent}|$PWD"'],
        tmp_path,
        {"PATH": PATH, "ORDER_VAR": "given"},
        20,
        lines,
    )
    assert outcome.succeeded
    assert "from the code directory" in lines.texts
    assert f"given|absent|{tmp_path}" in lines.texts


def test_first_failing_command_stops_the_order(tmp_path: Path) -> None:
    outcome, lines = run(["echo one", "echo two; exit 3", "touch ran-after-failure"], tmp_path)

    assert outcome.status == schema.FAILED and not outcome.timed_out
    assert (outcome.exit_code, outcome.failed_command) == (3, 2)
    assert outcome.reason == "command 2 of 3 exited with 3"
    assert not (tmp_path / "ran-after-failure").exists()
    assert "$ touch ran-after-failure" not in lines.texts
    assert outcome.log.endswith("two\n")


def test_a_command_killed_by_a_signal_fails(tmp_path: Path) -> None:
    outcome, _ = run(["kill -KILL $$"], tmp_path)
    assert outcome.status == schema.FAILED
    assert outcome.reason == "command 1 of 1 was killed by signal 9"


def test_timeout_kills_the_whole_process_group_and_stops(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, lines = run(
        ["sleep 60 & echo $! > background.pid; echo started; sleep 60; echo never", "touch ran-after-timeout"],
        tmp_path,
        timeout=1.0,
    )
    elapsed = time.monotonic() - started

    assert outcome.status == schema.FAILED and outcome.timed_out
    assert outcome.failed_command == 1 and outcome.exit_code is None
    assert outcome.reason == "timed out after 1 s (the order's timeout) in command 1 of 2"
    assert 0.9 < elapsed < 5
    assert "started" in lines.texts and "never" not in lines.texts
    assert not (tmp_path / "ran-after-timeout").exists()
    background = int((tmp_path / "background.pid").read_text())
    deadline = time.monotonic() + 3
    while _alive(background) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(background), "the command's background process outlived the timeout"


def test_a_command_writing_without_pause_is_still_stopped_at_the_deadline(tmp_path: Path) -> None:
    count = 0

    def on_line(_line: str) -> None:
        nonlocal count
        count += 1

    started = time.monotonic()
    outcome = run_commands(["yes " + "x" * 200], tmp_path, {"PATH": PATH}, 1.0, on_line, log_limit=4096)
    assert outcome.timed_out and outcome.log_truncated
    assert time.monotonic() - started < 5
    assert count > 1000


def test_a_command_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, _ = run(["trap '' TERM; sleep 60"], tmp_path, timeout=0.5)
    assert outcome.timed_out
    assert time.monotonic() - started < 5


def test_the_timeout_covers_all_commands_together(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, lines = run(["sleep 0.7", "sleep 0.7", "sleep 0.7"], tmp_path, timeout=1.0)

    assert outcome.timed_out and outcome.failed_command == 2
    assert "$ sleep 0.7" in lines.texts and lines.texts.count("$ sleep 0.7") == 2
    assert time.monotonic() - started < 3


def test_the_timeout_reason_can_be_replaced(tmp_path: Path) -> None:
    outcome, _ = run(["sleep 5"], tmp_path, timeout=0.3, timeout_reason="stopped at the Lambda limit")
    assert outcome.timed_out and outcome.reason == "stopped at the Lambda limit"


def test_background_processes_left_behind_do_not_hold_the_order(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, lines = run(["sleep 30 & echo left-behind", "echo next"], tmp_path, timeout=20)
    assert outcome.succeeded
    assert lines.texts[-1] == "next"
    assert time.monotonic() - started < 5


def test_a_shell_that_closes_its_output_early_is_still_waited_for(tmp_path: Path) -> None:
    outcome, _ = run(["exec >/dev/null 2>&1; sleep 0.5; exit 4"], tmp_path)
    assert outcome.exit_code == 4


def test_secrets_are_masked_in_streamed_lines_and_the_log(tmp_path: Path) -> None:
    env = {
        "PATH": PATH,
        "T1": "hunter2-token",
        "T2": "abc",
        "T3": "hunter2-token-longer",
        "T4": "l1-secret\nl2-secret",
    }
    lines = Lines()
    outcome = run_commands(
        ["echo $T1 $T2 $T3", 'printf "%s\\n" "$T4"', 'echo "$T1$T1" >&2', "env | sort"],
        tmp_path,
        env,
        20,
        lines,
        secrets=env.values(),
    )
    assert outcome.succeeded
    assert lines.texts[1] == f"{MASK} abc {MASK}"  # "abc": 3 characters, not a credential
    assert lines.texts[3:5] == [MASK, MASK]  # each line of a multi-line value
    assert lines.texts[6] == MASK * 2  # stderr too
    assert f"T1={MASK}" in lines.texts and f"T3={MASK}" in lines.texts and "T2=abc" in lines.texts
    for text in ("\n".join(lines.texts), outcome.log):
        for value in ("hunter2", "l1-secret", "l2-secret"):
            assert value not in text
    assert outcome.log == "".join(text + "\n" for text in lines.texts)


def test_the_log_keeps_the_start_and_says_it_was_truncated(tmp_path: Path) -> None:
    outcome, lines = run(['for i in $(seq 1 3000); do echo "line $i ünï"; done'], tmp_path, log_limit=4096)

    assert outcome.succeeded and outcome.log_truncated
    assert len(outcome.log.encode()) <= 4096
    assert outcome.log.startswith("$ for i in")
    assert "line 1 ünï\nline 2 ünï\n" in outcome.log
    assert "line 3000" not in outcome.log
    assert outcome.log.endswith(" bytes of output are not kept]\n")
    assert "[log truncated: the last " in outcome.log
    # The function log still got every line: the cap is only on what result.json keeps.
    assert len(lines.texts) == 3001 and lines.texts[-1] == "line 3000 ünï"


def test_the_default_log_cap_is_the_schema_limit(tmp_path: Path) -> None:
    outcome, _ = run(["head -c 200000 /dev/zero | tr '\\0' x; echo"], tmp_path)
    assert outcome.log_truncated
    assert len(outcome.log.encode()) <= schema.LOG_LIMIT_BYTES
    assert len(outcome.log.encode()) > schema.LOG_LIMIT_BYTES - 512


def test_log_collector_cuts_on_a_character_boundary() -> None:
    collected = LogCollector(200)
    collected.add("é" * 100)  # 200 bytes + newline: does not fit the 72 bytes of room
    text = collected.text()
    assert collected.truncated
    assert text.startswith("é" * 36 + "\n[log truncated")
    assert len(text.encode()) <= 200


def test_log_collector_without_truncation_is_the_lines() -> None:
    collected = LogCollector(1000)
    collected.add("a")
    collected.add("b")
    assert not collected.truncated and collected.text() == "a\nb\n"


def test_masker_masks_long_values_whole_and_leaves_short_ones() -> None:
    mask = Masker(["abcd", "abcdefgh", "xyz", ""])
    assert mask("abcdefgh abcd xyz abc") == f"{MASK} {MASK} xyz abc"
    assert Masker([])("nothing to hide") == "nothing to hide"


def test_base_environment_is_minimal_and_passes_no_credentials(tmp_path: Path) -> None:
    env = base_environment(
        tmp_path,
        {
            "PATH": "/opt/bin:/usr/bin",
            "AWS_REGION": "eu-west-1",
            "AWS_ACCESS_KEY_ID": "AKIAWORKER",
            "AWS_SECRET_ACCESS_KEY": "worker-secret",
            "AWS_SESSION_TOKEN": "worker-session",
            "SOPS_AGE_KEY": "AGE-SECRET-KEY-1X",
        },
    )
    assert env == {
        "PATH": "/opt/bin:/usr/bin",
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),
        "LANG": "C.UTF-8",
        "AWS_REGION": "eu-west-1",
    }


def test_no_commands_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no commands"):
        run_commands([], tmp_path, {"PATH": PATH}, 1, Lines())
