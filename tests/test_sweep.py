"""Protocol grids, the task script (resume, skip finished cells), SLURM arrays, evaluation-only checkpoint lookup.

The task script runs here with a fake `tcclip` (a few lines of bash that write what the real one would), so the
script's logic is tested without training anything.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tcclip.cli.commands import run_command
from tcclip.experiments import protocols, slurm_arrays
from tcclip.experiments.cells import SweepSettings, find_eval_checkpoint, write_plan
from tcclip.experiments.protocols import Selection, build_grid
from tcclip.experiments.slurm_arrays import SlurmOptions, planned, render_job_script

FAKE_TCCLIP = r"""#!/usr/bin/env bash
# Fake tcclip: logs its command line, writes a last.ckpt (a copy of a real one, fit) or a results.json one folder
# down (test).
echo "$*" >> "$FAKE_LOG"
echo "${CUDA_VISIBLE_DEVICES:-unset}" >> "$FAKE_LOG.gpus"
cmd=$1; shift
root=""; prev=""
for a in "$@"; do [[ $prev == --trainer.default_root_dir ]] && root=$a; prev=$a; done
if [[ $cmd == fit ]]; then
  if [[ -n ${FAKE_WAIT:-} ]]; then
    # A fit that saves and exits 143 on SIGTERM, as tcclip.training.preemption makes the real one do.
    save() { mkdir -p "$root/checkpoints"; cp "$FAKE_CKPT" "$root/checkpoints/last.ckpt"; }
    trap 'touch "$(dirname "$FAKE_LOG")/fake-got-term"; save; exit 143' TERM
    touch "$FAKE_WAIT"
    for _ in $(seq 600); do sleep 0.1; done
  fi
  mkdir -p "$root/checkpoints" && cp "$FAKE_CKPT" "$root/checkpoints/last.ckpt"
  if [[ -n ${FAKE_DIE:-} ]]; then exit 3; fi
elif [[ $cmd == test ]]; then
  mkdir -p "$root/version_0" && echo '{"sets": {"test": {"top1": 42.0, "top5": 90.0}}}' > "$root/version_0/results.json"
fi
"""


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tcclip = bin_dir / "tcclip"
    tcclip.write_text(FAKE_TCCLIP)
    sbatch = bin_dir / "sbatch"
    # Fake sbatch: logs its arguments, answers with a job id like `sbatch --parsable`.
    sbatch.write_text(
        '#!/usr/bin/env bash\necho "$*" >> "$FAKE_SBATCH_LOG"\necho $((1000 + $(wc -l < "$FAKE_SBATCH_LOG")))\n'
    )
    squeue = bin_dir / "squeue"
    squeue.write_text('#!/usr/bin/env bash\necho "$3"\n')  # Fake squeue: every job asked about is still queued.
    for f in (tcclip, sbatch, squeue):
        f.chmod(0o755)
    log, sbatch_log = tmp_path / "tcclip.log", tmp_path / "sbatch.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_SBATCH_LOG", str(sbatch_log))
    monkeypatch.setenv("FAKE_CKPT", str(_save_checkpoint(tmp_path / "trained.ckpt")))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    configs = tmp_path / "configs"
    configs.mkdir()
    for protocol in protocols.GRIDS:
        for cell in build_grid(protocol):
            for name in filter(None, [cell.fit_config, *(e.config for e in cell.evaluations)]):
                (configs / name).touch()
    return {"tcclip": tcclip, "log": log, "sbatch_log": sbatch_log, "configs": configs, "root": tmp_path}


def _save_checkpoint(path: Path, mtime: int | None = None) -> Path:
    """A small readable Lightning-style checkpoint (what a cell resumes from and evaluates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"model.w": torch.zeros(2)}, "epoch": 0}, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _settings(fake: dict[str, Path], **kw) -> SweepSettings:
    base = {"runs_dir": fake["root"] / "runs", "config_dir": fake["configs"], "tcclip": (str(fake["tcclip"]),)}
    return SweepSettings(workdir=fake["root"], **(base | kw))


def test_grids_match_the_paper_tables() -> None:
    sizes = {p: len(build_grid(p)) for p in protocols.GRIDS}
    # few-shot: (3 datasets x 3 variants - SSv2 LLM) x 4 K; base-to-novel: (4 x 3 - SSv2 LLM - K400 P) x 3 seeds.
    assert sizes == {"zero_shot": 2, "few_shot": 32, "base2novel": 30, "fully_supervised": 1}
    for protocol in protocols.GRIDS:
        names = [c.name for c in build_grid(protocol)]
        assert len(set(names)) == len(names)
    few = {c.name: c for c in build_grid("few_shot")}
    assert few["hmdb51_k8_llm"].fit_config == "few_shot_hmdb_k8_llm.yaml"
    assert few["ssv2_k16_pretrained"].requires == "zero_shot/k400_plain"
    zs = build_grid("zero_shot")[0]
    assert [e.dataset for e in zs.evaluations] == ["hmdb51", "ucf101", "k600"]


def test_selection_by_dataset_k_variant_and_pattern() -> None:
    few = build_grid("few_shot")
    chosen = Selection(datasets=("hmdb51",), shots=(8,), variants=("plain", "llm")).apply(few)
    assert [c.name for c in chosen] == ["hmdb51_k8_plain", "hmdb51_k8_llm"]
    assert [c.name for c in Selection(only=("ucf101_k2_*",)).apply(few)] == [
        f"ucf101_k2_{v}" for v in protocols.VARIANTS
    ]
    zero = Selection(datasets=("k600",)).apply(build_grid("zero_shot"))
    assert [[e.name for e in c.evaluations] for c in zero] == [["k600"], ["k600"]]


def _bash_n(text: str, tmp_path: Path) -> None:
    script = tmp_path / "check.sh"
    script.write_text(text)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_slurm_script_has_array_resources_srun_and_requeue(tmp_path: Path) -> None:
    cells = Selection(datasets=("hmdb51", "ucf101"), variants=("plain",)).apply(build_grid("few_shot"))
    opts = SlurmOptions(
        nodes=2, gpus_per_node=4, partition="gpu", account="proj", time="12:00:00", extra_sbatch=("qos=high",)
    )
    settings = SweepSettings(tcclip=("tcclip",), runs_dir=tmp_path / "runs")
    text = render_job_script(len(cells), tmp_path / "plan.json", settings, opts, title="few_shot")
    _bash_n(text, tmp_path)
    sbatch = re.findall(r"^#SBATCH (.*)$", text, flags=re.M)
    for line in (
        "--array=0-7",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gres=gpu:4",
        "--partition=gpu",
        "--account=proj",
        "--time=12:00:00",
        "--signal=SIGUSR1@90",
        "--requeue",
        "--qos=high",
    ):
        assert line in sbatch
    assert text.splitlines()[0] == "#!/usr/bin/env bash" and text.index("#SBATCH") < text.index("set -euo")
    assert (
        text.rstrip().splitlines()[-1] == f"exec {sys.executable} -m tcclip.cli sweep run-cell {tmp_path}/plan.json "
        "\"$SLURM_ARRAY_TASK_ID\" --plan-id ''"
    )
    # What each task runs: srun over all its GPUs, Lightning's SLURM environment with requeue.
    task = replace(settings, launcher=opts.launcher(), trainer_args=tuple(opts.trainer_args()))
    fit = next(line for line in planned(cells[0], task) if " fit " in line)
    assert fit.startswith("srun --kill-on-bad-exit=1 tcclip fit")
    for flag in ("--trainer.devices=4", "--trainer.num_nodes=2", "SLURMEnvironment", "auto_requeue=false"):
        assert flag in fit and flag in text  # the script states the srun line too
    # A task requeued after SIGUSR1 resumes from the checkpoint Lightning wrote.
    hpc = _save_checkpoint(task.run_dir(cells[0]) / "hpc_ckpt_1.ckpt")  # where Lightning saves it: the root dir
    fit = next(line for line in planned(cells[0], task) if " fit " in line)
    assert fit.endswith(f"--ckpt_path {hpc}")


def test_sweep_slurm_submits_pretrained_source_first(fake: dict[str, Path]) -> None:
    args = ["--grid", "few_shot", "--datasets", "hmdb51", "--shots", "2", "--slurm", "--partition", "gpu"]
    args += ["--runs-dir", str(fake["root"] / "runs"), "--config-dir", str(fake["configs"])]
    assert sweep_main(args) == 0
    first, second = fake["sbatch_log"].read_text().splitlines()
    assert first.startswith("--parsable ") and "tcclip-few_shot-prerequisites" in first
    assert second.startswith("--parsable --dependency=afterok:1001 ")
    script = Path(second.split()[-1]).read_text()
    assert "#SBATCH --array=0-2" in script
    plan = json.loads(Path(script.split("-m tcclip.cli sweep run-cell ")[1].split()[0]).read_text())
    assert [c["requires"] for c in plan["cells"]] == [None, None, "zero_shot/k400_plain"]  # plain, llm, (P)
    assert plan["settings"]["launcher"] == ["srun", "--kill-on-bad-exit=1"]
    # A second sweep needing the same K400 model waits for the queued job instead of training it again.
    assert sweep_main([args[0], "base2novel", "--datasets", "ucf101", "--seeds", "1", *args[6:]]) == 0
    third = fake["sbatch_log"].read_text().splitlines()[2:]
    assert len(third) == 1 and third[0].startswith("--parsable --dependency=afterok:1001_0 ")


def test_dry_run_writes_a_script_that_runs_as_printed(fake: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    args = ["--grid", "base2novel", "--datasets", "ucf101", "--variants", "plain", "--slurm", "--dry-run"]
    assert sweep_main([*args, "--runs-dir", str(fake["root"] / "runs"), "--config-dir", str(fake["configs"])]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-2" in out and f"srun --kill-on-bad-exit=1 {sys.executable} -m tcclip.cli fit" in out
    assert not fake["sbatch_log"].exists()  # nothing submitted
    submit = re.search(r"submit it as written with: sbatch --parsable (\S+)\)", out).group(1)
    script = Path(submit).read_text()
    assert script in out
    # The plan it names exists and is its own: a task of it runs (here: the fake tcclip, through the plan's id).
    task = script.rstrip().splitlines()[-1].removeprefix("exec ").replace('"$SLURM_ARRAY_TASK_ID"', "0")
    plan = Path(task.split()[5])  # python -m tcclip.cli sweep run-cell PLAN
    assert json.loads(plan.read_text())["cells"][0]["key"] == "base2novel/ucf101_s1_plain"
    data = json.loads(plan.read_text())
    data["settings"]["launcher"] = []  # no srun here
    data["settings"]["tcclip"] = [str(fake["tcclip"])]
    plan.write_text(json.dumps(data))
    proc = subprocess.run(task.split(), capture_output=True, text=True, cwd=fake["root"])
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in fake["log"].read_text().splitlines()] == ["fit", "test"]


def sweep_main(argv: list[str]) -> int:
    return run_command("sweep", argv)


def _submit(fake: dict[str, Path], shots: str, *more: str) -> int:
    args = ["--grid", "few_shot", "--datasets", "hmdb51", "--variants", "plain", "--shots", shots, "--slurm"]
    args += ["--runs-dir", str(fake["root"] / "runs"), "--config-dir", str(fake["configs"]), *more]
    return sweep_main(args)


def _run_task(script: Path, index: int, fake: dict[str, Path]) -> subprocess.CompletedProcess:
    """Array task `index` of a written job script, without srun, tcclip being the fake."""
    line = script.read_text().rstrip().splitlines()[-1].removeprefix("exec ")
    words = [w.strip("'") for w in line.replace('"$SLURM_ARRAY_TASK_ID"', str(index)).split()]
    plan = Path(words[5])  # python -m tcclip.cli sweep run-cell PLAN
    data = json.loads(plan.read_text())
    data["settings"].update(launcher=[], tcclip=[str(fake["tcclip"])])
    plan.write_text(json.dumps(data))
    return subprocess.run(words, capture_output=True, text=True, cwd=fake["root"])


def test_two_submissions_in_one_second_each_train_their_own_cell(
    fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slurm_arrays.time, "strftime", lambda *a: "20260101-000000")  # the same second, for sure
    assert _submit(fake, "2") == 0 and _submit(fake, "4") == 0
    scripts = sorted((fake["root"] / "runs" / "slurm").glob("*.sbatch"))
    plans = sorted((fake["root"] / "runs" / "slurm").glob("*.json"))
    assert len(scripts) == 2 and len(plans) == 2
    for script in scripts:
        assert _run_task(script, 0, fake).returncode == 0
    fits = [line for line in fake["log"].read_text().splitlines() if line.startswith("fit ")]
    trained = sorted(line.split("--trainer.default_root_dir ")[1].split()[0].rsplit("/", 1)[1] for line in fits)
    assert trained == ["hmdb51_k2_plain", "hmdb51_k4_plain"]


def test_a_task_refuses_a_plan_that_is_not_its_own(fake: dict[str, Path]) -> None:
    assert _submit(fake, "2") == 0
    (script,) = (fake["root"] / "runs" / "slurm").glob("*.sbatch")
    plan = next((fake["root"] / "runs" / "slurm").glob("*.json"))
    data = json.loads(plan.read_text())
    data["id"] = "someone-else"
    plan.write_text(json.dumps(data))
    proc = _run_task(script, 0, fake)
    assert proc.returncode == 2 and "this job script was written for plan" in proc.stderr
    assert not fake["log"].exists()  # nothing ran


def test_cpu_job_script_and_user_trainer_options_win(fake: dict[str, Path], tmp_path: Path) -> None:
    cells = Selection(only=("hmdb51_k2_plain",)).apply(build_grid("few_shot"))
    opts = SlurmOptions(gpus_per_node=0, cpus_per_task=2)
    settings = SweepSettings(runs_dir=tmp_path / "runs", extra_args=("--trainer.precision=bf16-mixed",))
    text = render_job_script(1, tmp_path / "plan.json", settings, opts, title="few_shot")
    _bash_n(text, tmp_path)
    sbatch = re.findall(r"^#SBATCH (.*)$", text, flags=re.M)
    assert "--ntasks-per-node=1" in sbatch and "--cpus-per-task=2" in sbatch
    assert not any("gres" in line for line in sbatch)
    task = replace(settings, launcher=opts.launcher(), trainer_args=tuple(opts.trainer_args()))
    fit = next(line for line in planned(cells[0], task) if " fit " in line)
    assert "--trainer.accelerator=cpu --trainer.devices=1 --trainer.num_nodes=1" in fit
    assert fit.index("--trainer.accelerator=cpu") < fit.index("--trainer.precision=bf16-mixed")  # last one wins
    # --smoke on SLURM: a CPU job by default, the smoke trainer options after the plan's.
    assert _submit(fake, "2", "--smoke", "--no-collect") == 0
    script = Path(fake["sbatch_log"].read_text().split()[-1])
    assert "--gres" not in script.read_text() and "--ntasks-per-node=1" in script.read_text()


def test_setup_lines_add_to_the_environment_activation_and_grace_sets_the_signal(fake: dict[str, Path]) -> None:
    assert _submit(fake, "2", "--setup", "module load ffmpeg", "--grace", "300", "--time", "2:00:00") == 0
    script = Path(fake["sbatch_log"].read_text().split()[-1]).read_text()
    assert "#SBATCH --signal=SIGUSR1@300" in script and "#SBATCH --time=2:00:00" in script
    lines = script.splitlines()
    assert "module load ffmpeg" in lines
    if sys.prefix != sys.base_prefix:  # the environment of this Python is activated first, then the user's lines
        activate = next(i for i, line in enumerate(lines) if line.startswith("source ") and "activate" in line)
        assert activate < lines.index("module load ffmpeg")
    assert f"exec {sys.executable} -m tcclip.cli sweep run-cell" in script


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--nodes", "0"], "--nodes 0: a job needs at least one node"),
        (["--time", "banana"], "--time 'banana': not a SLURM time limit"),
        (["--time", "1:00", "--grace", "90"], "--grace 90: the requeue signal would come before the job starts"),
        (["--gpus-per-node", "-1"], "--gpus-per-node -1: cannot be negative"),
        (["--cpus-per-task", "0"], "--cpus-per-task 0: a task needs at least one CPU"),
    ],
)
def test_slurm_resources_sbatch_would_refuse_are_one_clear_error(
    fake: dict[str, Path], extra: list[str], phrase: str, capsys: pytest.CaptureFixture
) -> None:
    from tcclip.cli import main

    args = ["sweep", "--grid", "few_shot", "--datasets", "hmdb51", "--shots", "2", "--slurm", *extra]
    assert main([*args, "--runs-dir", str(fake["root"] / "runs"), "--config-dir", str(fake["configs"])]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Fix:" in err and "Traceback" not in err, err
    assert not (fake["root"] / "runs").exists() and not fake["sbatch_log"].exists()


def test_slurm_time_formats() -> None:
    assert slurm_arrays.time_limit_s("30") == 1800 and slurm_arrays.time_limit_s("30:15") == 1815
    assert slurm_arrays.time_limit_s("24:00:00") == 86400 and slurm_arrays.time_limit_s("2-12") == 2 * 86400 + 12 * 3600
    assert slurm_arrays.time_limit_s("1-0:30") == 86400 + 1800 and slurm_arrays.time_limit_s("1-0:0:5") == 86405
    assert slurm_arrays.time_limit_s("UNLIMITED") is None
    for bad in ("banana", "1:2:3:4", "-5", "0", "1h", ""):
        with pytest.raises(ValueError):
            slurm_arrays.time_limit_s(bad)


@pytest.mark.parametrize(
    ("sbatch", "phrase"),
    [
        (None, "there is no `sbatch` on PATH"),
        (
            "echo 'sbatch: error: Invalid generic resource (gres) specification' >&2; exit 1",
            "sbatch refused the job array tcclip-few_shot: sbatch: error: Invalid generic resource (gres) spec",
        ),
    ],
)
def test_a_refused_submission_is_one_paragraph_and_leaves_no_file(
    fake: dict[str, Path], sbatch: str | None, phrase: str, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    from tcclip.cli import main

    fake_sbatch = fake["root"] / "bin" / "sbatch"
    if sbatch is None:
        fake_sbatch.unlink()
        monkeypatch.setenv("PATH", str(fake["root"] / "bin"))
    else:
        fake_sbatch.write_text(f"#!/usr/bin/env bash\n{sbatch}\n")
    args = ["sweep", "--grid", "few_shot", "--datasets", "hmdb51", "--shots", "2", "--variants", "plain", "--slurm"]
    assert main([*args, "--runs-dir", str(fake["root"] / "runs"), "--config-dir", str(fake["configs"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tcclip sweep: error: ") and phrase in err and "Fix:" in err, err
    assert "Traceback" not in err
    assert list((fake["root"] / "runs" / "slurm").glob("*.*")) == []  # neither plan nor script left behind


def test_a_stale_fit_marker_is_repaired_and_a_stopped_fit_is_never_marked_done(fake: dict[str, Path]) -> None:
    from tcclip.experiments.cells import FIT_DONE, CellFailed, run_cell, subprocess_runner
    from tcclip.training.runs import STOP_KEY

    settings = _settings(fake)
    (cell,) = Selection(only=("hmdb51_k2_plain",)).apply(build_grid("few_shot"))
    run_dir = settings.run_dir(cell)
    run_dir.mkdir(parents=True)
    (run_dir / FIT_DONE).touch()  # a marker without any checkpoint: a wedged cell of an older version
    said: list[str] = []
    run_cell(cell, settings, subprocess_runner(settings), said.append)
    assert any("is stale (no readable last.ckpt" in line and "the fit runs again" in line for line in said)
    assert (run_dir / FIT_DONE).is_file() and settings.results_path(cell, cell.evaluations[0]).is_file()

    # A fit that exits 0 but whose newest checkpoint is one saved on a stop signal is not finished.
    (other,) = Selection(only=("hmdb51_k4_plain",)).apply(build_grid("few_shot"))
    stop_ckpt = fake["root"] / "stopped.ckpt"
    torch.save(
        {"state_dict": {"model.w": torch.zeros(2)}, STOP_KEY: {"signal": "SIGTERM", "global_step": 3}}, stop_ckpt
    )
    os.environ["FAKE_CKPT"], previous = str(stop_ckpt), os.environ["FAKE_CKPT"]
    try:
        with pytest.raises(CellFailed, match="saved when SIGTERM stopped the fit at global step 3"):
            run_cell(other, settings, subprocess_runner(settings), said.append)
    finally:
        os.environ["FAKE_CKPT"] = previous
    assert not (settings.run_dir(other) / FIT_DONE).exists()


def test_sigterm_to_an_array_task_reaches_the_fit_and_stops_the_cell(fake: dict[str, Path]) -> None:
    import signal
    import time

    settings = _settings(fake)
    cells = Selection(only=("hmdb51_k2_plain",)).apply(build_grid("few_shot"))
    plan = fake["root"] / "plan.json"
    write_plan(plan, cells, settings, "p1")
    ready = fake["root"] / "fit-started"
    task = subprocess.Popen(
        [sys.executable, "-m", "tcclip.cli", "sweep", "run-cell", str(plan), "0", "--plan-id", "p1"],
        env={**os.environ, "FAKE_WAIT": str(ready)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    task.send_signal(signal.SIGTERM)
    _, err = task.communicate(timeout=60)
    assert task.returncode == 143, err
    assert "stopped by SIGTERM" in err and "resume" in err
    assert (fake["log"].parent / "fake-got-term").is_file()  # the fit itself got the signal
    assert not (settings.run_dir(cells[0]) / "fit.done").exists()
    assert [line.split()[0] for line in fake["log"].read_text().splitlines()] == ["fit"]  # no test after it


def test_array_task_resumes_a_dead_run_and_skips_finished_cells(fake: dict[str, Path]) -> None:
    settings = _settings(fake)
    cells = Selection(only=("hmdb51_k2_plain",)).apply(build_grid("few_shot"))
    plan = fake["root"] / "plan.json"
    write_plan(plan, cells, settings)
    task = [
        sys.executable,
        "-m",
        "tcclip.experiments.cells",
        str(plan),
        "0",
    ]  # what job scripts written before `tcclip sweep run-cell` run in array task 0: still works
    run = lambda **env: subprocess.run(task, env={**os.environ, **env}, capture_output=True)  # noqa: E731
    assert run(FAKE_DIE="1").returncode == 3  # the fit dies after writing last.ckpt
    assert run().returncode == 0
    fits = [line for line in fake["log"].read_text().splitlines() if line.startswith("fit ")]
    assert "--ckpt_path" not in fits[0] and fits[1].endswith(
        f"--ckpt_path {settings.run_dir(cells[0])}/checkpoints/last.ckpt"
    )
    result = settings.results_path(cells[0], cells[0].evaluations[0])
    assert json.loads(result.read_text())["sets"]["test"]["top1"] == 42.0
    calls = len(fake["log"].read_text().splitlines())
    assert b"nothing to do" in run().stdout
    assert len(fake["log"].read_text().splitlines()) == calls
    assert subprocess.run([*task[:-1], "1"], capture_output=True).returncode == 2  # the plan has no cell 1


def test_a_truncated_newest_last_checkpoint_is_skipped_on_resume(
    fake: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(fake)
    (cell,) = Selection(only=("hmdb51_k2_plain",)).apply(build_grid("few_shot"))
    logs = settings.run_dir(cell) / "lightning_logs"
    good = _save_checkpoint(logs / "version_0" / "checkpoints" / "last.ckpt", mtime=100)
    cut = logs / "version_1" / "checkpoints" / "last.ckpt"  # the save a kill cut short: newer, unreadable
    cut.parent.mkdir(parents=True)
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    os.utime(cut, (200, 200))
    older = _save_checkpoint(logs / "version_0" / "checkpoints" / "last-v1.ckpt", mtime=50)  # readable, but older
    with caplog.at_level(logging.WARNING, logger="tcclip.training.runs"):
        fit = next(line for line in planned(cell, settings) if " fit " in line)
    assert fit.endswith(f"--ckpt_path {good}") and str(older) not in fit
    assert f"skipping an unreadable checkpoint: {cut}" in caplog.text


def test_local_sweep_runs_cells_and_collects(fake: dict[str, Path]) -> None:
    args = ["--grid", "few_shot", "--datasets", "ucf101", "--variants", "plain,pretrained", "--shots", "2,4"]
    args += ["--runs-dir", str(fake["root"] / "runs"), "--results-dir", str(fake["root"] / "results")]
    args += ["--config-dir", str(fake["configs"]), "--tcclip", str(fake["tcclip"])]
    assert sweep_main(args) == 0
    log = fake["log"].read_text().splitlines()
    assert log[0].startswith("fit --config") and "zero_shot_k400.yaml" in log[0]  # the pretrained source first
    init = [line.split()[0] for line in log if "--model.init_checkpoint" in line]
    assert init == ["fit", "test", "fit", "test"]  # both pretrained cells start from the zero-shot model
    assert all("zero_shot/k400_plain/checkpoints/last.ckpt" in line for line in log if "init_checkpoint" in line)
    table = (fake["root"] / "results" / "few_shot.md").read_text()
    assert "| TC-CLIP (P) | UCF-101 | 42.0 / 94.1 (-52.1) | 42.0 / 95.6 (-53.6) |" in table
    calls = len(log)
    assert sweep_main(args) == 0  # everything finished: nothing runs again
    assert len(fake["log"].read_text().splitlines()) == calls


def test_eval_only_finds_our_and_official_checkpoints(tmp_path: Path) -> None:
    few = {c.name: c for c in build_grid("few_shot")}
    b2n = {c.name: c for c in build_grid("base2novel")}
    for name in (
        "few_shot_hmdb51_8shot_tc_clip.pth",
        "few_shot_hmdb51_8shot_llm_tc_clip.pth",
        "base2novel_k400_base2_tc_clip.pth",
        "ucf101_k4_pretrained.ckpt",
    ):
        (tmp_path / name).touch()
    assert find_eval_checkpoint(few["hmdb51_k8_plain"], tmp_path).name == "few_shot_hmdb51_8shot_tc_clip.pth"
    assert find_eval_checkpoint(few["hmdb51_k8_llm"], tmp_path).name == "few_shot_hmdb51_8shot_llm_tc_clip.pth"
    assert find_eval_checkpoint(b2n["k400_s2_plain"], tmp_path).name == "base2novel_k400_base2_tc_clip.pth"
    assert find_eval_checkpoint(few["ucf101_k4_pretrained"], tmp_path).name == "ucf101_k4_pretrained.ckpt"
    assert find_eval_checkpoint(few["hmdb51_k2_plain"], tmp_path) is None
    settings = SweepSettings(ckpt_dir=tmp_path, tcclip=("tcclip",))
    (command,) = planned(few["hmdb51_k8_plain"], settings)
    assert command.startswith("tcclip test ") and "--model.init_checkpoint" in command


def test_eval_only_sweep_tests_the_checkpoints_it_finds(fake: dict[str, Path]) -> None:
    ckpts = fake["root"] / "ckpts"
    ckpts.mkdir()
    (ckpts / "few_shot_ucf101_2shot_tc_clip.pth").touch()
    (ckpts / "ucf101_k4_plain.ckpt").touch()
    args = ["--grid", "few_shot", "--datasets", "ucf101", "--variants", "plain", "--ckpt-dir", str(ckpts)]
    args += ["--runs-dir", str(fake["root"] / "runs"), "--results-dir", str(fake["root"] / "results")]
    assert sweep_main([*args, "--config-dir", str(fake["configs"]), "--tcclip", str(fake["tcclip"])]) == 0
    log = fake["log"].read_text().splitlines()
    assert [line.split()[0] for line in log] == ["test", "test"]  # no training
    assert f"--model.init_checkpoint {ckpts}/few_shot_ucf101_2shot_tc_clip.pth" in log[0]
    assert f"--ckpt_path {ckpts}/ucf101_k4_plain.ckpt" in log[1]
    table = (fake["root"] / "results" / "few_shot.md").read_text()
    assert "| TC-CLIP | UCF-101 | 42.0 / 85.9 (-43.9) | 42.0 / 89.9 (-47.9) | — / 92.5 | — / 94.6 |" in table


def test_local_runner_pins_one_gpu_per_cell(fake: dict[str, Path]) -> None:
    args = ["--grid", "base2novel", "--datasets", "hmdb51", "--variants", "plain", "--gpus", "0,1", "--no-collect"]
    args += ["--runs-dir", str(fake["root"] / "runs"), "--config-dir", str(fake["configs"])]
    assert sweep_main([*args, "--tcclip", str(fake["tcclip"])]) == 0
    gpus = Path(f"{fake['log']}.gpus").read_text().split()
    assert len(gpus) == 3 * 2 and set(gpus) <= {"0", "1"}  # 3 seeds x (fit, test), each on one of the two GPUs


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--grid", ""], "--grid '' names no protocol"),
        (["--grid", "few_shot", "--shots", "0"], "--shots 0: 0 is not one of the paper's values (2, 4, 8, 16)"),
        (["--grid", "all", "--seeds", "0"], "--seeds 0: 0 is not one of the paper's values (1, 2, 3)"),
        (
            ["--grid", "few_shot", "--only", "nomatch*"],
            "(--only nomatch*) leaves no cell of the grid few_shot (32 cells)",
        ),
        (
            ["--grid", "zero_shot", "--datasets", "ssv2"],
            "(--datasets ssv2) leaves no cell of the grid zero_shot (2 cells)",
        ),
        (["--grid", "fewshot"], "unknown grid 'fewshot'"),
    ],
)
def test_an_empty_or_unofficial_selection_is_an_error(
    args: list[str], phrase: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tcclip.cli import main

    out = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), "--smoke"]
    assert main(["sweep", *args, *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tcclip sweep: error: ") and phrase in err and "Fix:" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_benchmark_target_with_a_pattern_that_matches_nothing_fails(tmp_path: Path) -> None:
    import sys

    repo = Path(__file__).resolve().parents[1]
    where = f"--runs-dir {tmp_path / 'runs'} --results-dir {tmp_path / 'results'}"
    command = ["make", "-s", "-C", str(repo), "benchmark-few-shot", "SMOKE=1", "ONLY=nomatch*", f"PY={sys.executable}"]
    proc = subprocess.run([*command, f"SWEEP_ARGS={where}"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "tcclip sweep: error: the selection (--only nomatch*) leaves no cell of the grid few_shot" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_a_failed_collection_keeps_the_earlier_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tcclip.experiments import results

    cells = build_grid("fully_supervised")
    out = tmp_path / "results"
    first = results.collect_protocol("fully_supervised", cells, tmp_path / "runs", out)
    before = {p.name: p.read_bytes() for p in first.files}

    def broken_plot(rows, path, title):
        raise RuntimeError("plotting failed")

    monkeypatch.setitem(
        results.COLLECTORS, "fully_supervised", lambda c, r, m: ([{"x": 1}], "| new |", "", broken_plot)
    )
    with pytest.raises(RuntimeError, match="plotting failed"):
        results.collect_protocol("fully_supervised", cells, tmp_path / "runs", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no new CSV beside the old plot, no scratch
