"""Progress output: rich on a terminal, plain lines elsewhere, nothing under --quiet."""

from __future__ import annotations

from hw2cli import ui


def test_plain_progress_reports_counts_rate_and_metrics(capsys, monkeypatch):
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(ui.time, "perf_counter", lambda: next(clock))  # one second per step
    with ui.progress("train", total=20) as bar:
        for _ in range(20):
            bar.update(1, loss=0.5)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("train:")]
    assert len(lines) == 10  # every 10 %
    assert lines[-1].startswith("train: 20/20 ")
    assert "it/s" in lines[-1] and "loss=0.5" in lines[-1]


def test_a_fast_task_says_one_plain_line_and_fractions_add_up(capsys):
    with ui.progress("check", total=1000) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("check:")]
    assert len(lines) == 1 and lines[0].startswith("check: 1000/1000 ")
    with ui.progress("ddim", total=2) as bar:
        for _ in range(2 * 49):
            bar.update(1 / 49)  # a step of a face
        assert bar.done == 2 and isinstance(bar.done, int)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ddim:")]
    assert lines[-1].startswith("ddim: 2/2 ")


def test_quiet_prints_no_progress(capsys):
    ui.configure(quiet=True)
    with ui.progress("x", total=3) as bar:
        bar.update(3)
    ui.info("status")
    ui.result("kept")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.strip() == "kept"


def test_table_and_json_go_to_stdout(capsys):
    ui.print_table(["a", "b"], [[1, 0.123456]], title="t")
    ui.print_json({"a": 1})
    out = capsys.readouterr().out
    assert "0.1235" in out and '"a": 1' in out


def test_resumed_progress_rate_counts_only_this_runs_steps(capsys, monkeypatch):
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(ui.time, "perf_counter", lambda: next(clock))
    with ui.progress("train", total=100) as bar:
        bar.reset(100, 50)  # 50 steps were done before the resume
        for _ in range(10):
            bar.update(1)  # one step per clock tick
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train:")]
    assert lines, "no progress line"
    assert lines[0].startswith("train: 60/100 ")  # the first line is at 60 %, not at once
    rate = float(lines[-1].split()[2])
    assert 0.5 <= rate <= 1.0  # ~1 it/s; counting the resumed 50 steps would say ~6 it/s


def test_only_the_first_process_of_a_launch_prints_status_and_results(capsys, monkeypatch):
    """torchrun and accelerate launch set RANK: the second process says nothing the first says
    too, and marks its own errors with its rank."""

    def everything():
        ui.info("training on cpu")
        ui.warn("a note")
        ui.result("done: step 4")
        ui.print_json({"accuracy": 1.0})
        ui.print_table(["a"], [[1]])
        with ui.progress("train", total=2) as bar:
            bar.update(2)
        ui.error("the state is damaged")
        return capsys.readouterr()

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    second = everything()
    assert second.out == "" and second.err.strip() == "[rank 1] Error: the state is damaged"
    monkeypatch.setenv("RANK", "0")
    first = everything()
    assert "done: step 4" in first.out and '"accuracy": 1.0' in first.out
    assert "training on cpu" in first.err and "Warning: a note" in first.err and "train: 2/2" in first.err
    assert "Error: the state is damaged" in first.err and "rank" not in first.err


def test_a_rank_without_a_launch_is_a_plain_process(capsys, monkeypatch):
    """Some schedulers set RANK for every job; without a WORLD_SIZE above 1 it is no launch."""
    monkeypatch.setenv("RANK", "1")
    ui.result("done")
    monkeypatch.setenv("WORLD_SIZE", "1")
    ui.result("again")
    assert capsys.readouterr().out.split() == ["done", "again"]
