"""Hardening (issue 36), the run side: names cannot leave the run directory or replace what is not an
artifact, one writer per run directory (two real processes), file-system faults (a full disk, a
read-only mount, no permission: real ones, in a user and mount namespace) end in one line with nothing
half-written left, and evaluation splits that cannot measure anything are refused."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_hardening_config import BASE, DATA, leftovers, merged

from lifecycle import ConfigError
from lifecycle.cli import main

ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def pipeline_file(tmp_path: Path, patch: dict | None = None, data: str = DATA) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(merged(copy.deepcopy(BASE), patch or {}), sort_keys=False))
    (tmp_path / "data.csv").write_text(data)
    return path


def one_error(err: str) -> str:
    """The one `error: ` line of a failed command (a Trainer progress bar may share its terminal line)."""
    errors = [line[line.index("error: "):] for line in err.splitlines() if "error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


def no_half_written(root: Path) -> None:
    assert leftovers(root) == []


# --------------------------------------------------------------------------------- names are names
def victim(tmp_path: Path) -> Path:
    """A user's folder with a file in it, outside the workdir: no config may touch it."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years of work")
    return folder


@pytest.mark.parametrize("name", ["{victim}", "../mine", "../../mine", "a/b", "pipeline.json", "report.md",
                                  "junit.xml", "run.sig", "finetune.part", ".lock"])
def test_a_stage_name_cannot_leave_the_run_directory(name, tmp_path, capsys):
    """Each escape is refused at validate and at run, naming the field; the user's folder survives and the
    run directory is never created."""
    folder = victim(tmp_path)
    path = pipeline_file(tmp_path, {"stages": [{"name": name.format(victim=folder)}]})
    for argv in (["validate", str(path)], ["run", str(path), "--workdir", str(tmp_path / "work")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert one_error(err).endswith("invalid pipeline") and "\n  stages[0].name: '" in err
    assert (folder / "thesis.txt").read_text() == "four years of work" and sorted(os.listdir(folder)) == ["thesis.txt"]
    assert not (tmp_path / "work").exists()


def test_a_user_folder_where_an_artifact_goes_is_refused_and_kept(tmp_path, capsys):
    """A folder without manifest.json where the stage's artifact goes (a user's, inside a run directory)
    is refused before the stage runs: the atomic swap used to rename it away and delete it."""
    path = pipeline_file(tmp_path)
    run_dir = tmp_path / "work" / "adv"
    run_dir.mkdir(parents=True)
    (run_dir / "pipeline.json").write_text("{}")  # an earlier run's record: a run directory
    (run_dir / "finetune").mkdir()
    (run_dir / "finetune" / "notes.txt").write_text("mine")
    assert main(["run", str(path), "--workdir", str(tmp_path / "work")]) == 1
    line = one_error(capsys.readouterr().err)
    assert f"{run_dir / 'finetune'}: exists and is not an artifact (no manifest.json)" in line
    assert (run_dir / "finetune" / "notes.txt").read_text() == "mine"
    no_half_written(tmp_path)


def test_a_symlinked_stage_directory_is_refused(tmp_path, capsys):
    """<run>/<stage> a symlink to a folder elsewhere: the write would land outside the run directory."""
    folder = victim(tmp_path)
    path = pipeline_file(tmp_path)
    run_dir = tmp_path / "work" / "adv"
    run_dir.mkdir(parents=True)
    (run_dir / "pipeline.json").write_text("{}")
    (run_dir / "finetune").symlink_to(folder, target_is_directory=True)
    assert main(["run", str(path), "--workdir", str(tmp_path / "work")]) == 1
    assert "not inside the run directory" in one_error(capsys.readouterr().err)
    assert sorted(os.listdir(folder)) == ["thesis.txt"]


def test_a_directory_that_is_not_a_run_is_refused(tmp_path, capsys):
    """<workdir>/<name> exists, holds files and is no run directory (no pipeline.json): nothing is written
    into it (a run would add its files and replace folders named like its stages)."""
    path = pipeline_file(tmp_path)
    run_dir = tmp_path / "work" / "adv"
    run_dir.mkdir(parents=True)
    (run_dir / "photos.txt").write_text("mine")
    assert main(["run", str(path), "--workdir", str(tmp_path / "work")]) == 1
    assert f"{run_dir}: not empty and not a run directory (no pipeline.json)" in one_error(capsys.readouterr().err)
    assert os.listdir(run_dir) == ["photos.txt"]


@pytest.mark.parametrize("what", ["file", "dangling symlink"])
def test_a_file_where_the_run_directory_goes_is_refused(what, tmp_path, capsys):
    path = pipeline_file(tmp_path)
    (tmp_path / "work").mkdir()
    run_dir = tmp_path / "work" / "adv"
    run_dir.write_text("mine") if what == "file" else run_dir.symlink_to(tmp_path / "nowhere")
    assert main(["run", str(path), "--workdir", str(tmp_path / "work")]) == 1
    assert f"{run_dir}: exists and is not a directory" in one_error(capsys.readouterr().err)
    assert os.listdir(tmp_path / "work") == ["adv"] and not (tmp_path / "nowhere").exists()


def test_a_large_pipeline_file_is_refused_before_it_is_parsed(tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: big\n" + "# padding\n" * 120_000)
    assert main(["validate", str(path)]) == 2
    assert "pipeline.yaml: larger than 1 MiB" in one_error(capsys.readouterr().err)


def test_a_fifo_as_data_is_refused_not_read_forever(tmp_path, capsys):
    path = pipeline_file(tmp_path, {"data": {"news": {"path": "pipe.csv"}}})
    os.mkfifo(tmp_path / "pipe.csv")
    assert main(["run", str(path), "--workdir", str(tmp_path / "work")]) == 1
    assert f"{tmp_path / 'pipe.csv'} is not a regular file or a folder" in one_error(capsys.readouterr().err)
    assert not (tmp_path / "work").exists()


# ------------------------------------------------------------------------- one writer per run directory
def lifecycle(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lifecycle.cli", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def wait_for_holder(lock: Path, proc: subprocess.Popen) -> dict:
    """The lock file's record once `proc` holds the lock."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            holder = json.loads(lock.read_text())
        except (OSError, ValueError):  # not there yet, or being rewritten
            holder = {}
        if holder.get("pid") == proc.pid:
            return holder
        time.sleep(0.05)
    raise AssertionError(f"no lock taken: {proc.communicate()[0][-2000:]}")


@pytest.mark.serial  # the second run must reach the lock while the first one's two steps still run
def test_a_second_run_on_the_same_directory_is_refused_naming_the_holder(tmp_path):
    """Two real `lifecycle run` on one workdir: the second is refused at once with the first's pid, the
    first finishes untouched (and `gate` passes it); a holder killed with -9 blocks no one."""
    path = pipeline_file(tmp_path, {"stages": [{"collapse_min": None}]})  # 2 steps: no collapse gate
    work = tmp_path / "work"
    lock = work / "adv" / ".lock"
    first = lifecycle("run", str(path), "--workdir", str(work))
    holder = wait_for_holder(lock, first)
    assert "lifecycle" in holder["command"] and " run " in holder["command"]

    second = lifecycle("run", str(path), "--workdir", str(work))
    out = second.communicate(timeout=120)[0]
    assert second.returncode == 1, out[-2000:]
    assert f"{work / 'adv'}: another run is writing it (pid {first.pid} on " in one_error(out)
    assert first.poll() is None  # refused while the first still ran, not after waiting for it

    out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out[-3000:]
    gate = subprocess.run([sys.executable, "-m", "lifecycle.cli", "gate", str(work / "adv")], env=ENV,
                          capture_output=True, text=True)
    assert gate.returncode == 0, gate.stdout + gate.stderr

    # A holder killed with -9 leaves its lock file, which the kernel no longer holds: the next run goes on.
    killed = lifecycle("run", str(path), "--workdir", str(work), "--from", "finetune")
    wait_for_holder(lock, killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert json.loads(lock.read_text())["pid"] == killed.pid  # the stale file is still there
    again = lifecycle("run", str(path), "--workdir", str(work))
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out[-3000:]


def test_a_run_killed_inside_a_stage_resumes_reusing_the_finished_one(tmp_path, capsys):
    """A real `lifecycle run` (finetune -> export) killed with -9 while export builds: the finished finetune
    is reused by the next run (not retrained: its weights' bytes and timings are the same), the partial
    export directory and its scratch space are replaced, and the run completes with nothing half-written."""
    path = pipeline_file(tmp_path, {"stages": [{"collapse_min": None}, {"kind": "export", "latency": {"runs": 2}}]})
    work, run_dir = tmp_path / "work", tmp_path / "work" / "adv"
    with open(tmp_path / "killed.log", "w") as log:  # a file, not a pipe nobody reads while it runs
        killed = subprocess.Popen([sys.executable, "-m", "lifecycle.cli", "run", str(path), "--workdir", str(work)],
                                  env=ENV, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not ((run_dir / "finetune" / "manifest.json").is_file() and (run_dir / "export.tmp").is_dir()):
        assert killed.poll() is None and time.time() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(30) == -signal.SIGKILL
    assert not (run_dir / "export").exists(), "export finished before the kill: nothing was interrupted"
    assert json.loads((run_dir / "pipeline.json").read_text())["state"] == "running"  # it never got to say more
    assert "export.tmp" in leftovers(run_dir)  # the partial artifact the next run must not reuse
    weights = run_dir / "finetune" / "model.safetensors"
    before = (weights.stat().st_mtime_ns, json.loads((run_dir / "finetune" / "manifest.json").read_text())["timings"])

    assert main(["run", str(path), "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    assert f"== stage finetune (finetune): cached, artifact verified ({run_dir / 'finetune'})" in out
    assert "== stage export (export)\n" in out
    assert (weights.stat().st_mtime_ns, json.loads((run_dir / "finetune" / "manifest.json").read_text())["timings"]) == before
    export = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert export["parent"]["path"] == str(run_dir / "finetune") and (run_dir / "export" / "model.onnx").is_file()
    assert json.loads((run_dir / "pipeline.json").read_text())["state"] == "finished"
    no_half_written(run_dir)


# ------------------------------------------------------------------------------ file-system faults
def namespaces() -> str | None:
    """Why real faults cannot be made here (None: they can). A user + mount namespace lets a test mount a
    small or read-only tmpfs, and a plain user namespace drops root's right to ignore file modes."""
    for probe in (["unshare", "-rm", "true"], ["unshare", "-U", "true"]):
        try:
            if subprocess.run(probe, capture_output=True).returncode != 0:
                return f"the kernel refuses `{' '.join(probe)}`"
        except FileNotFoundError:
            return "no unshare(1)"
    return None


NO_NAMESPACES = namespaces()
needs_namespaces = pytest.mark.skipif(NO_NAMESPACES is not None, reason=str(NO_NAMESPACES))
RUN = f"{sys.executable} -m lifecycle.cli run pipeline.yaml --workdir $W"
# After the run, still inside the namespace (its mounts end with it): what is left that must not be.
LEFT = ('echo "rc=$?"; echo "left:"; find $W -name "*.tmp" -o -name "*.part" -o -path "*/.scratch/*" '
        '-not -path "*/checkpoint-*/*"')


def faulty_run(tmp_path: Path, shell: str, stage: dict | None = None,
               unshare: tuple[str, ...] = ("-rm",)) -> tuple[int, str, list[str]]:
    """`lifecycle run` on a tiny finetune (`stage` merged into it) under `shell`, which sets up $W, the
    workdir: its exit code, its output and what it left behind."""
    pipeline_file(tmp_path, {"stages": [{"collapse_min": None, **(stage or {})}]})
    (tmp_path / "work").mkdir()
    script = f"W={tmp_path / 'work'}; {shell}; {RUN} 2>&1; {LEFT}"
    out = subprocess.run(["unshare", *unshare, "sh", "-c", script], cwd=tmp_path, env=ENV, capture_output=True,
                         text=True, timeout=300).stdout
    head, _, left = out.rpartition("left:\n")
    rc = int(head.rsplit("rc=", 1)[1])
    return rc, head, left.split()


@needs_namespaces
@pytest.mark.parametrize("save", ["checkpoint", "artifact"])
def test_a_full_disk_during_a_save_ends_in_one_line(save, tmp_path):
    """A small tmpfs: the run record fits, the save does not. A Trainer checkpoint (600 KB: its weights fit,
    then torch.save of the optimizer fails with no errno, 'unexpected pos'), or with no checkpoints the
    artifact's weights (300 KB: safetensors wraps ENOSPC in a SafetensorError)."""
    size, patch = ("600k", {}) if save == "checkpoint" else ("300k", {"train": {"save_steps": 1000}})
    rc, out, left = faulty_run(tmp_path, f"mount -t tmpfs -o size={size} none $W", patch)
    assert rc == 1, out[-3000:]
    line = one_error(out)
    assert f"{tmp_path / 'work' / 'adv'}" in line and "no space left on the device" in line, line
    assert left == [], left


@needs_namespaces
def test_a_read_only_file_system_during_a_stage_ends_in_one_line(tmp_path):
    """The run's record is written, the stage's scratch space is a read-only mount."""
    shell = ("mount -t tmpfs none $W && mkdir -p $W/adv/.scratch && echo {} > $W/adv/pipeline.json && "
             "mount -t tmpfs -o ro none $W/adv/.scratch")
    rc, out, left = faulty_run(tmp_path, shell)
    assert rc == 1, out[-3000:]
    line = one_error(out)
    assert f"{tmp_path / 'work' / 'adv' / '.scratch'}" in line and "read-only file system" in line, line
    assert left == [], left


@needs_namespaces
@pytest.mark.parametrize("where", ["workdir", "scratch"])
def test_no_permission_ends_in_one_line(where, tmp_path):
    """In a user namespace root keeps its uid but loses CAP_DAC_OVERRIDE: a mode 0555 folder is then
    really read-only to it (EACCES), as for any user."""
    rc, out, left = faulty_run(tmp_path, "chmod 555 $W" if where == "workdir" else
                               "mkdir -p $W/adv/.scratch && echo {} > $W/adv/pipeline.json && chmod 555 $W/adv/.scratch",
                               unshare=("-U",))
    assert rc == 1, out[-3000:]
    line = one_error(out)
    assert "permission denied" in line and str(tmp_path / "work") in line, line
    assert left == [], left


# ------------------------------------------------------------------------ degenerate evaluation refused
ONE_CLASS_TEST = "text,label\n" + "".join(f"common words here {i},a\n" for i in range(78)) + \
    "rare words there 0,b\nrare words there 1,b\n"


def test_a_test_split_of_one_class_is_refused(tmp_path, capsys):
    """The issue's case: 78 rows of one label and 2 of another, split 20/20. The held-out splits cannot
    hold class 'b' in both: a model answering 'a' everywhere scored 1.0 and passed every gate."""
    path = pipeline_file(tmp_path, {"stages": [{"gates": [{"metric": "accuracy", "min": 0.9}]}]}, data=ONE_CLASS_TEST)
    assert main(["run", str(path), "--workdir", str(tmp_path / "work")]) == 1
    line = one_error(capsys.readouterr().err)
    assert "data source 'news': the " in line and " split has no example of class 'b' (it holds 'a')" in line, line
    no_half_written(tmp_path)


def test_every_training_class_must_be_in_test(tmp_path, capsys):
    """Three classes, one of them only in train (explicit split files): its examples are never scored."""
    rows = "".join(f"{w} text {i},{w}\n" for i in range(6) for w in ("red", "green"))
    (tmp_path / "train.csv").write_text("text,label\n" + rows + "blue text 0,blue\nblue text 1,blue\n")
    (tmp_path / "test.csv").write_text("text,label\n" + rows)
    path = pipeline_file(tmp_path, {"data": {"news": {"path": None, "train": "train.csv", "test": "test.csv",
                                                      "split": {"validation": 0.3}}}})
    assert main(["run", str(path), "--workdir", str(tmp_path / "work")]) == 1
    line = one_error(capsys.readouterr().err)
    assert "split has no example of class 'blue'" in line, line


def test_a_regression_target_without_variance_is_refused(tmp_path):
    from lifecycle import LifecycleError, config, data

    rows = "".join(f"{i},{i % 7},3.5\n" for i in range(60))  # R² of a constant is undefined, its errors are 0
    (tmp_path / "table.csv").write_text("a,b,y\n" + rows)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "name": "flat", "data": {"t": {"format": "csv", "path": "table.csv", "table": {"target": "y"},
                                       "split": {"validation": 0.1, "test": 0.1, "stratify": False}}},
        "task": {"type": "tabular-regression", "data": "t"},
        "stages": [{"kind": "pretrain", "data": "t", "objective": "masked-feature", "train": {"max_steps": 1}}]}))
    pipeline = config.load(path)
    with pytest.raises(LifecycleError, match=r"table.csv: the target 'y' has one value \(3.5\) in the train split"):
        data.load(pipeline.data["t"], pipeline)


@pytest.mark.parametrize("memory", [float("nan"), float("inf"), 0.0, -8.0])
def test_plan_refuses_a_memory_size_that_is_no_size(memory, tmp_path):
    """`plan --memory-gb nan` printed a table in which every stage 'fits' (no comparison with NaN fails); the CLI
    refuses the flag (tests/test_hardening_release.py), the Python API the argument."""
    from lifecycle import planning
    from lifecycle.config import load

    with pytest.raises(ConfigError, match=f"--memory-gb: {memory} is not a size"):
        planning.plan(load(pipeline_file(tmp_path)), memory, calibrate_steps=0)
