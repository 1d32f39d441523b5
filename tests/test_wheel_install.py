"""The built wheel is a whole program: installed into a fresh virtual environment outside the checkout, `tcclip fit`
finds its shared defaults (checkpoint callbacks), writes last.ckpt, and `--ckpt_path last` resumes from it.

The fresh environment borrows the dependencies (torch, Lightning, ...) of the running one through a `.pth` line that
only adds that site-packages folder to `sys.path`: its `.pth` files (among them the editable install of tcclip) are
not processed, so the only tcclip it can import is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# What a wheel is built from; everything else in a working copy (venvs, runs, caches) stays behind.
SOURCES = ("pyproject.toml", "README.md", "tcclip")


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv (outside the checkout) with the tcclip wheel installed; returns its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], root)
    (wheel,) = dist.glob("tcclip-*.whl")

    venv = root / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], root)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], root)
    # Only now make the dependencies visible (pip must not see, let alone touch, the tcclip of the running venv).
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TCCLIP_DEFAULTS", "VIRTUAL_ENV")}
    env["TCCLIP_SPLITS_DIR"] = "/nonexistent-splits"  # nothing here may come from the checkout's data_splits/
    return env


def test_installed_package_has_its_data(wheel_venv: Path, tmp_path: Path) -> None:
    code = (
        "import tcclip, tcclip.cli.lightning as c, tcclip.data.splits as s, tcclip.experiments.slurm_arrays as w; "
        "print(tcclip.__file__); print(c.defaults_files()[0]); print(len(s.load_manifest().files)); "
        "print(w.JOB_TEMPLATE.is_file())"
    )
    out = _run([str(wheel_venv / "python"), "-c", code], tmp_path, _clean_env()).split()
    module, defaults, entries, template = out[:4]
    assert template == "True"  # the SLURM job script template
    venv = wheel_venv.parent.resolve()
    assert Path(module).resolve().is_relative_to(venv), module
    assert Path(defaults).resolve().is_relative_to(venv) and Path(defaults).name == "defaults.yaml"
    manifest = json.loads((REPO / "tcclip" / "data" / "split_manifest.json").read_text())
    assert int(entries) == len(manifest["files"])


def test_installed_fit_writes_last_and_resumes(wheel_venv: Path, data_synth: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"  # a user's folder: no checkout around it
    work.mkdir()
    shutil.copy2(REPO / "configs" / "demo.yaml", work / "demo.yaml")
    args = [
        "--config=demo.yaml",
        f"--data.init_args.root={data_synth}",
        "--data.init_args.num_frames=4",
        "--data.init_args.batch_size=3",
        "--model.optim.total_batch_size=3",
        "--trainer.default_root_dir=run",
    ]
    tcclip = str(wheel_venv / "tcclip")
    _run([tcclip, "fit", *args, "--trainer.max_epochs=1"], work, _clean_env())
    (first,) = (work / "run").rglob("last.ckpt")
    state = torch.load(first, map_location="cpu", weights_only=False)
    # 9 training videos in batches of 3, one optimiser step per batch.
    assert (state["epoch"], state["global_step"]) == (0, 3)
    assert any("val/top1" in k for k in state["callbacks"]), "the packaged defaults (checkpoints) were not read"

    _run([tcclip, "fit", *args, "--trainer.max_epochs=2", "--ckpt_path=last"], work, _clean_env())
    newest = max((work / "run").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    state = torch.load(newest, map_location="cpu", weights_only=False)
    assert (state["epoch"], state["global_step"]) == (1, 6)  # continued from step 3, not started again


def test_installed_data_download_and_verify(wheel_venv: Path, tmp_path: Path) -> None:
    """`tcclip data download` (RAR through libarchive) and `data verify` from the wheel, outside the checkout."""
    from local_server import LocalServer
    from rar_writer import rar_bytes

    from tcclip.data.synth import render_video, write_video

    video = write_video(
        tmp_path / "v.avi", render_video("MoveRight", 4, 32, 32, __import__("numpy").random.default_rng(0))
    )
    inner = rar_bytes({"jump/jump_1.avi": video.read_bytes(), "jump/jump_2.avi": video.read_bytes()})
    root = tmp_path / "hmdb"
    with LocalServer({"/hmdb51_org.rar": rar_bytes({"jump.rar": inner})}) as server:
        out = _run([str(wheel_venv / "tcclip"), "data", "download", "hmdb51", "--root", str(root),
                    "--url", server.url("/hmdb51_org.rar")], tmp_path, _clean_env())  # fmt: skip
    assert "hmdb51: 2 videos" in out and sorted(p.name for p in root.glob("*.avi")) == ["jump_1.avi", "jump_2.avi"]
    (tmp_path / "list.txt").write_text("jump_1.avi 0\njump_2.avi 0\n")
    (tmp_path / "labels.csv").write_text("id,name\n0,jump\n")
    (tmp_path / "config.yaml").write_text(
        "data:\n  class_path: tcclip.data.datamodule.VideoListDataModule\n  init_args:\n"
        f"    labels: {tmp_path / 'labels.csv'}\n    test_lists: [{tmp_path / 'list.txt'}]\n    root: {root}\n"
    )
    env = _clean_env() | {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = _run(
        [str(wheel_venv / "tcclip"), "data", "verify", "--config", "config.yaml", "--workers", "1"], tmp_path, env
    )
    assert "test/list: 2/2 present, 2 decodable, 2 exact" in out
