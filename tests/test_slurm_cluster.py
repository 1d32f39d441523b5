"""The SLURM sweep on a real single-node cluster (tests/slurm_cluster.py): a 2-cell CPU smoke sweep submitted as two
`tcclip sweep --slurm` calls at once, one cell requeued mid-fit (SIGUSR1 to its fit, as before a time limit or on a
signal-based preemption), the other cancelled mid-fit (`scancel`: SIGTERM) and resubmitted. Both cells must end with
the batches, weights and results of an uninterrupted local run of the same sweep."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tcclip.training.callbacks import read_batch_log

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
from slurm_cluster import REQUIRE_ENV, Cluster, ClusterDidNotStart, single_node_cluster, unavailable  # noqa: E402

CELLS = {"2": "hmdb51_k2_plain", "4": "hmdb51_k4_plain"}
STEPS = 6  # training batches per cell; every fit is paused (and signalled, on SLURM) after step PAUSE
PAUSE = 3


def sweep_command(runs: Path, shots: str, pause_dir: Path, wait_s: float, *more: str) -> list[str]:
    command = [sys.executable, "-m", "tcclip.cli", "sweep", "--grid", "few_shot", "--datasets", "hmdb51"]
    command += ["--variants", "plain", "--shots", shots, "--smoke", "--smoke-steps", str(STEPS)]
    command += ["--runs-dir", str(runs), "--results-dir", str(runs.parent / f"{runs.name}-results")]
    command += ["--config-dir", str(REPO / "configs"), *more, "--"]
    command += ["--trainer.deterministic=true", "--trainer.callbacks+=tcclip.training.callbacks.BatchLog"]
    command += ["--trainer.callbacks+=stop_helpers.PauseAt", f"--trainer.callbacks.init_args.step={PAUSE}"]
    command += [f"--trainer.callbacks.init_args.folder={pause_dir}", f"--trainer.callbacks.init_args.wait_s={wait_s}"]
    return command


def wait_for(condition, timeout_s: float, what: str, cluster: Cluster | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    details = "" if cluster is None else "\n" + cluster.run("squeue", check=False).stdout + cluster.logs()
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{details}")


def paused_cell(pause_dir: Path, seen: set[Path]) -> tuple[str, Path] | None:
    """(cell name, pause file) of a fit that has just paused, not one of `seen`."""
    for path in sorted(pause_dir.glob("paused-*")):
        if path not in seen:
            return Path(path.read_text()).name, path
    return None


def cell_outcome(runs: Path, name: str) -> dict:
    run = runs / "few_shot" / name
    (last,) = run.rglob("last.ckpt")
    results = json.loads(next((run / "eval").rglob("results.json")).read_text())
    (batches,) = run.rglob("batches.tsv")
    return {
        "weights": torch.load(last, map_location="cpu", weights_only=True)["state_dict"],
        "sets": results["sets"],
        "batches": read_batch_log(batches),
        "batch_lines": len(batches.read_text().splitlines()),
        "versions": sorted(p.name for p in (run / "lightning_logs").iterdir()),
        "fit_done": (run / "fit.done").is_file(),
        "last_files": sorted(p.name for p in run.rglob("last*.ckpt")),
    }


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
def test_sweep_on_a_real_cluster_survives_requeue_and_cancel(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}

    # The reference: the same sweep, run here without interruption.
    local = tmp_path / "local"
    proc = subprocess.run(
        sweep_command(local, "2,4", tmp_path / "pause-local", 0), env=env, capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    runs, pause = tmp_path / "slurm", tmp_path / "pause"
    shutil.copytree(local / "synthetic_data", runs / "synthetic_data")  # the same videos, written once
    stack = contextlib.ExitStack()
    try:
        cluster = stack.enter_context(single_node_cluster(tmp_path / "cluster"))
    except ClusterDidNotStart as err:
        if os.environ.get(REQUIRE_ENV):
            raise
        pytest.skip(f"a single-node SLURM cluster could not be started here ({str(err).splitlines()[0]})")
    with stack:
        env = {**env, **cluster.env}
        more = ["--slurm", "--partition", "cpu", "--grace", "30"]  # the README's CPU smoke sweep (+ a grace)
        # Two submissions at once (the unit tests force the same second): each array must train its own cell.
        submits = [
            subprocess.Popen(sweep_command(runs, k, pause, 120, *more), env=env, cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for k in CELLS
        ]  # fmt: skip
        outputs = [p.communicate(timeout=120)[0] for p in submits]
        assert [p.returncode for p in submits] == [0, 0], outputs
        jobs = {k: out.split("as job array ")[1].split()[0] for k, out in zip(CELLS, outputs, strict=True)}
        assert len(set(jobs.values())) == 2 and len(list((runs / "slurm").glob("*.json"))) == 2

        # Both fits pause after step PAUSE: requeue the K=2 cell through its fit, cancel the K=4 job.
        seen: set[Path] = set()
        actions = {CELLS["2"]: ["scancel", "--signal=USR1", f"{jobs['2']}_0"], CELLS["4"]: ["scancel", jobs["4"]]}
        for _ in range(2):
            name, path = wait_for(lambda: paused_cell(pause, seen), 300, "a fit to reach its pause", cluster)
            seen.add(path)
            cluster.run(*actions[name])
        wait_for(lambda: "CANCELLED" in cluster.job_states(jobs["4"]).values(), 120, "the cancel", cluster)

        # The cancelled cell is resubmitted with the same command; the requeued one comes back by itself.
        proc = subprocess.run(sweep_command(runs, "4", pause, 120, *more), env=env, cwd=REPO, capture_output=True,
                              text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        resubmitted = proc.stdout.split("as job array ")[1].split()[0]
        every = (jobs["2"], jobs["4"], resubmitted)

        def finished() -> bool:
            return not cluster.run("squeue", "-h", "-j", ",".join(every), check=False).stdout.strip()

        wait_for(finished, 600, "every job to finish", cluster)
        states = {job: cluster.job_states(job) for job in every}
        assert states[jobs["2"]] == {f"{jobs['2']}_0": "COMPLETED"}, states
        assert states[resubmitted] == {f"{resubmitted}_0": "COMPLETED"}, states
        logs = runs / "slurm" / "logs"
        requeued_log = (logs / f"few_shot-{CELLS['2']}-{jobs['2']}_0.out").read_text()  # log names carry the cell
        cancelled_log = (logs / f"few_shot-{CELLS['4']}-{jobs['4']}_0.out").read_text()
        resumed_log = (logs / f"few_shot-{CELLS['4']}-{resubmitted}_0.out").read_text()

    assert f"SIGUSR1 at epoch 0, global step {PAUSE}: saved the run" in requeued_log and "requeued" in requeued_log
    assert requeued_log.count("resuming from") == 1, requeued_log
    assert f"SIGTERM at epoch 0, global step {PAUSE}: saved the run" in cancelled_log, cancelled_log
    assert "resuming from" in resumed_log, resumed_log
    for k, name in CELLS.items():
        expected, got = cell_outcome(local, name), cell_outcome(runs, name)
        # One version folder (Lightning names it after the first SLURM job) holds the cell's logs across the stops.
        assert got["fit_done"] and len(got["versions"]) == 1, (k, got["versions"])
        assert got["last_files"] == ["last.ckpt"], (k, got["last_files"])
        assert got["batch_lines"] == STEPS  # resumed at step PAUSE: no batch trained twice
        assert got["batches"] == expected["batches"] and sorted(got["batches"]) == list(range(STEPS))
        assert expected["weights"].keys() == got["weights"].keys()
        assert all(torch.equal(expected["weights"][p], got["weights"][p]) for p in expected["weights"]), k
        assert got["sets"] == expected["sets"], k
