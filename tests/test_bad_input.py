"""Every mistake a user can make on the command line gets one clear message, the right exit code and no traceback.

The suite is a table: each `Case` row writes some files into a fresh folder, runs `tcclip <argv>` in this process
(`tcclip.cli.main`) and checks the exit code, a phrase of the message and that no traceback was printed. Adding a
case is adding a row to `CASES`.

Placeholders, replaced in argv, in file contents and in `phrase`:
    {tmp}    the test's folder (also the working directory)
    {ckpt}   a tiny TC-CLIP checkpoint whose classes are `CKPT_CLASSES` (built once per session, only if used)
    {video}  a small real mp4 video (built once per session, only if used)
    {lckpt}  a tiny Lightning checkpoint of configs/demo.yaml's network (8 frames), as `tcclip fit` writes
    {strckpt} {ckpt} with a string where its model_config stores a number
    {data}   a synthetic dataset of 3 classes (tests/conftest.py's `data_synth`)
    {data1}  a synthetic dataset of one class
    {config} configs/demo.yaml

`test_bad_input_rows_with_the_console_script` (slow) runs every row without a `setup` again through the installed
`tcclip` console script in a child process: a traceback anywhere, in any process, fails the suite.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch  # noqa: F401  (first imported outside captured output: it keeps the stream it logs to)
import pytest

from tcclip.cli import commands as cli
from tcclip.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DIR = object()
"""A `files` value: make an (empty) folder at that path."""
CKPT_CLASSES = ("move left", "move right", "grow")


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    exit_code: int
    phrase: str
    """Must appear in stdout + stderr (white space runs count as one space, so wrapped lines still match)."""
    files: Mapping[str, str | bytes | object] = field(default_factory=dict)
    """Relative path -> text (written as UTF-8), bytes, or `DIR`."""
    not_phrase: tuple[str, ...] = ()
    """Phrases that must not appear (a misleading hint)."""
    absent: tuple[str, ...] = ()
    """Relative paths that must not exist afterwards (nothing partial is left behind)."""
    check: Callable[[Path], None] | None = None
    """Extra assertions on the folder afterwards."""
    setup: Callable[[pytest.MonkeyPatch], None] | None = None
    """Changes the world before the run (e.g. no GPU); undone afterwards."""
    subprocess: bool = False
    """Run `python -m tcclip.cli` in a child process instead (for what only a fresh process shows)."""


# ---------------------------------------------------------------------------------------------------- helpers

LABELS_3 = "id,name\n0,run\n1,jump\n2,swim\n"
LIST_CONFIG = (
    "data:\n  class_path: tcclip.data.datamodule.VideoListDataModule\n"
    "  init_args: {labels: labels.csv, val_lists: [list.txt], root: ., backend: pyav}\n"
)
"""An experiment config's data section over ./list.txt (for `tcclip data check --config`)."""
LIST_3x2 = "".join(f"v/{c}{i}.mp4 {c}\n" for c in range(3) for i in range(2))


def make(*extra: str, labels: str = "labels.csv", video_list: str = "full.txt") -> tuple[str, ...]:
    """`tcclip splits make` on a list and a label file, writing into ./out."""
    return ("splits", "make", "--list", video_list, "--labels", labels, "--out", "out", *extra)


def predict(*extra: str) -> tuple[str, ...]:
    return ("predict", "{video}", "--checkpoint", "{ckpt}", "--workers", "0", "--views", "1x1", *extra)


def no_carriage_returns(folder: Path) -> None:
    for path in (folder / "out").rglob("*"):
        if path.is_file():
            assert b"\r" not in path.read_bytes(), path


def unicode_paths_kept(folder: Path) -> None:
    text = (folder / "out" / "train_few_shot_1.txt").read_text(encoding="utf-8")
    assert "vidéos/跳跃 clip 0.mp4 0" in text and "naïve/ü 1.mp4 1" in text


MANIFEST_1 = (
    '{"commit": "abc", "url_template": "https://example.invalid/{commit}/{path}", '
    '"files": [{"path": "labels/a.csv", "size": 3, "sha256": "00"}]}'
)


def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def permission_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a folder without write permission (chmod does not stop root, who may run these tests)."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich's tables keep a row on one line


LONG = "/".join(["d" * 200] * 6)  # a 1200-character folder path, each part near the 255-byte name limit


def demo(*extra: str, root: str = "{data}", run: str = "run") -> tuple[str, ...]:
    """Options of a Lightning command on configs/demo.yaml, the test data and ./run."""
    return ("--config", "{config}", f"--data.init_args.root={root}", f"--trainer.default_root_dir={run}", *extra)


def raise_in(target: str, exception: BaseException) -> Callable[[pytest.MonkeyPatch], None]:
    """A `setup` that makes `module.attribute` raise `exception` when called (a full disk, a Ctrl-C at that point)."""

    def setup(monkeypatch: pytest.MonkeyPatch) -> None:
        import importlib

        parts = target.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # the longest importable prefix, then attributes (a class)
            try:
                owner = importlib.import_module(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name)

        def fail(*args, **kwargs):
            raise exception

        monkeypatch.setattr(owner, parts[-1], fail)

    return setup


def disk_full_after_first_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up while a timeline is written: one file is there, then ENOSPC."""
    import errno

    from tcclip.inference import timeline_outputs

    def write(tl, out):
        (out / "windows.csv").write_text("window,start\n0,0.0")  # cut mid-way
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "segments.csv"))

    monkeypatch.setattr(timeline_outputs, "_write_timeline_files", write)


def few_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    from tcclip.inference import timeline_windows

    monkeypatch.setattr(timeline_windows, "MAX_WINDOWS", 5)


def env_root_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TCCLIP_DATA_ROOT", "/elsewhere/videos")


def earlier_timeline_kept(folder: Path) -> None:
    assert (folder / "tl" / "windows.csv").read_text() == "earlier\n"
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [], "a temporary folder was left"


def earlier_export_kept(folder: Path) -> None:
    assert (folder / "exp" / "model.onnx").read_text() == "earlier\n"
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [], "a temporary folder was left"


def only_new_export(folder: Path) -> None:
    names = sorted(p.name for p in (folder / "exp").iterdir())
    assert names == ["README.md", "config.json", "model.safetensors"], names
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "a temporary folder was left"


def file_untouched(rel: str, text: str) -> Callable[[Path], None]:
    def check(folder: Path) -> None:
        assert (folder / rel).read_text() == text

    return check


ENOSPC = OSError(28, "No space left on device", "run/lightning_logs/version_0/events.out.tfevents")
EARLIER_EXPORT = {"exp/config.json": '{"format": "tcclip-export"}', "exp/model.onnx": "earlier\n"}


# ---------------------------------------------------------------------------------------------------- the table

CASES: list[Case] = [
    # --- class lists -----------------------------------------------------------------------------------------
    Case(
        "labels-csv-unbalanced-quote",
        make("--shots", "1"),
        2,
        "labels.csv:3: the name of class 1 has a line break",
        files={"labels.csv": 'id,name\n0,run\n1,"jump\n2,swim\n', "full.txt": LIST_3x2},
    ),
    Case(
        "labels-csv-duplicate-name",
        make("--shots", "1"),
        2,
        "labels.csv:4: the class name 'run' appears twice in this file: classes 0 (line 2) and 2",
        files={"labels.csv": "id,name\n0,run\n1,jump\n2,run\n", "full.txt": LIST_3x2},
    ),
    Case(
        "labels-csv-duplicate-after-normalisation",
        make("--shots", "1"),
        2,
        "labels.csv:4: class 2 'apply_eye_makeup' reads the same to the text encoder as class 1 'ApplyEyeMakeup'",
        files={"labels.csv": "id,name\n0,run\n1,ApplyEyeMakeup\n2,apply_eye_makeup\n", "full.txt": LIST_3x2},
    ),
    Case(
        "labels-json-duplicate-key",
        make("--shots", "1", labels="labels.json"),
        2,
        "labels.json:4: the key '1' appears more than once",
        files={"labels.json": '{\n "0": "run",\n "1": "jump",\n "1": "swim",\n "2": "walk"\n}\n', "full.txt": LIST_3x2},
    ),
    Case(
        "labels-json-duplicate-description",
        make("--shots", "1", labels="labels.json"),
        2,
        "labels.json:4: the class name 'Run' appears twice",
        files={"labels.json": '{\n "0": "Run",\n "1": "jump",\n "2": "Run"\n}\n', "full.txt": LIST_3x2},
    ),
    Case(
        "labels-csv-with-bom-and-crlf-works",
        make("--shots", "1"),
        0,
        "wrote out/train_few_shot_1.txt",
        files={"labels.csv": b"\xef\xbb\xbfid,name\r\n0,run\r\n1,jump\r\n2,swim\r\n", "full.txt": LIST_3x2},
        check=no_carriage_returns,
    ),
    Case(
        "labels-json-with-bom-and-crlf-works",
        make("--shots", "1", "--base-novel", "--base-shots", "1", labels="labels.json"),
        0,
        "wrote out/base2novel/novel_labels.csv",
        files={
            "labels.json": '\ufeff{\r\n "0": "run",\r\n "1": "jump",\r\n "2": "swim"\r\n}\r\n',
            "full.txt": LIST_3x2,
        },
        check=no_carriage_returns,
    ),
    Case(
        "list-missing",
        make("--shots", "1", video_list="nowhere.txt"),
        2,
        "nowhere.txt: file not found. Check the path",
        files={"labels.csv": LABELS_3},
    ),
    Case(
        "list-with-crlf-works",
        make("--shots", "2", "--base-novel", "--base-shots", "2", "--eval-list", "full.txt"),
        0,
        "wrote out/base2novel/base_labels.csv",
        files={"labels.csv": LABELS_3, "full.txt": LIST_3x2.replace("\n", "\r\n").encode()},
        check=no_carriage_returns,
    ),
    Case(
        "unicode-paths-work",
        make("--shots", "1", labels="étiquettes ü.csv", video_list="listé 跳跃.txt"),
        0,
        "wrote out/train_few_shot_1.txt",
        files={
            "étiquettes ü.csv": "id,name\n0,跳跃\n1,naïve\n",
            "listé 跳跃.txt": "vidéos/跳跃 clip 0.mp4 0\nnaïve/ü 1.mp4 1\n",
        },
        check=unicode_paths_kept,
    ),
    Case(
        "very-long-paths-work",
        ("splits", "make", "--list", f"{LONG}/full.txt", "--labels", f"{LONG}/labels.csv", "--out", f"{LONG}/out")
        + ("--shots", "1"),
        0,
        "train_few_shot_1.txt",
        files={f"{LONG}/labels.csv": LABELS_3, f"{LONG}/full.txt": LIST_3x2},
    ),
    Case(
        "labels-not-utf8",
        make("--shots", "1"),
        2,
        "labels.csv:3: not UTF-8 text (byte 0xe9",
        files={"labels.csv": b"id,name\n0,run\n1,caf\xe9\n2,swim\n", "full.txt": LIST_3x2},
    ),
    Case(
        "labels-empty-file",
        make("--shots", "1"),
        2,
        "labels.csv:1: expected the header 'id,name', found 'nothing'",
        files={"labels.csv": "", "full.txt": LIST_3x2},
    ),
    Case(
        "labels-is-a-folder",
        make("--shots", "1"),
        2,
        "labels.csv: is a folder, not a file",
        files={"labels.csv": DIR, "full.txt": LIST_3x2},
    ),
    Case(
        "labels-missing",
        make("--shots", "1", labels="nowhere.csv"),
        2,
        "nowhere.csv: file not found",
        files={"full.txt": LIST_3x2},
    ),
    Case(
        "labels-unknown-suffix",
        make("--shots", "1", labels="labels.txt"),
        2,
        "labels.txt: unknown label file type '.txt'",
        files={"labels.txt": LABELS_3, "full.txt": LIST_3x2},
    ),
    Case(
        "list-empty-file",
        make("--shots", "1"),
        2,
        "full.txt: the list has no videos",
        files={"labels.csv": LABELS_3, "full.txt": "\n\n"},
    ),
    Case(
        "list-bad-line",
        make("--shots", "1"),
        2,
        "full.txt:2: the label 'x' is not an integer",
        files={"labels.csv": LABELS_3, "full.txt": "a.mp4 0\nb.mp4 x\n"},
    ),
    # --- tcclip splits ----------------------------------------------------------------------------------------
    Case(
        "splits-make-negative-seed",
        make("--seed", "-1"),
        2,
        "argument --seed: must be >= 0, got -1",
        files={"labels.csv": LABELS_3, "full.txt": LIST_3x2},
        absent=("out",),
    ),
    Case(
        "splits-make-negative-shots",
        make("--shots", "-3"),
        2,
        "argument --shots: every shot count must be >= 1, got -3",
        files={"labels.csv": LABELS_3, "full.txt": LIST_3x2},
        absent=("out",),
    ),
    Case(
        "splits-make-zero-shots",
        make("--shots", "0"),
        2,
        "argument --shots: every shot count must be >= 1, got 0",
        files={"labels.csv": LABELS_3, "full.txt": LIST_3x2},
        absent=("out",),
    ),
    Case(
        "splits-make-empty-shots",
        make("--shots", ","),
        2,
        "argument --shots: expected shots per class such as 2,4,8,16",
        files={"labels.csv": LABELS_3, "full.txt": LIST_3x2},
        absent=("out",),
    ),
    Case(
        "splits-make-zero-base-shots",
        make("--shots", "1", "--base-novel", "--base-shots", "0"),
        2,
        "argument --base-shots: must be >= 1, got 0",
        files={"labels.csv": LABELS_3, "full.txt": LIST_3x2},
        absent=("out",),
    ),
    Case(
        "splits-make-too-many-shots-writes-nothing",
        make("--shots", "1,2,3"),
        2,
        "full.txt: class 0 has 2 videos, fewer than the 3 shots asked for",
        files={"labels.csv": LABELS_3, "full.txt": LIST_3x2},
        absent=("out/train_few_shot_1.txt", "out/train_few_shot_2.txt"),
    ),
    Case(
        "splits-make-out-is-a-file",
        make("--shots", "1"),
        2,
        "cannot write into the folder out",
        files={"labels.csv": LABELS_3, "full.txt": LIST_3x2, "out": "a file, not a folder\n"},
    ),
    Case(
        "splits-manifest-bad-json",
        ("splits", "download", "--manifest", "manifest.json", "--mirror", "mirror", "--dest", "dest"),
        2,
        "manifest.json:4: not valid JSON",
        files={"manifest.json": '{\n "commit": "abc",\n "files": [\n}\n', "mirror": DIR},
        absent=("dest",),
    ),
    Case(
        "splits-manifest-missing-key",
        ("splits", "download", "--manifest", "manifest.json", "--mirror", "mirror", "--dest", "dest"),
        2,
        "manifest.json: not a split manifest: the key 'url_template' is missing",
        files={"manifest.json": '{"commit": "abc", "files": []}', "mirror": DIR},
    ),
    Case(
        "splits-manifest-is-a-folder",
        ("splits", "download", "--manifest", "manifest.json", "--dest", "dest"),
        2,
        "manifest.json: split manifest not found (it is a folder)",
        files={"manifest.json": DIR},
    ),
    Case(
        "splits-download-unwritable-dest",
        ("splits", "download", "--manifest", "manifest.json", "--dest", "taken/splits"),
        2,
        "--dest taken/splits: cannot write there",
        files={"manifest.json": MANIFEST_1, "taken": "a file, not a folder\n"},
        not_phrase=("network",),
    ),
    Case(
        "splits-download-only-matches-nothing",
        ("splits", "download", "--manifest", "manifest.json", "--dest", "dest", "--only", "nomatch*"),
        2,
        "no file of the manifest matches --only nomatch*",
        files={"manifest.json": MANIFEST_1},
        absent=("dest",),
    ),
    # --- tcclip predict / explain: device, checkpoint, labels, outputs -----------------------------------------
    Case(
        "predict-duplicate-labels",
        predict("--labels", "run,jump,run"),
        2,
        "tcclip predict: error: --labels: the class name 'run' appears twice: classes 0 and 2",
    ),
    Case(
        "predict-labels-same-prompt",
        predict("--labels", "ApplyEyeMakeup,jump,apply eye makeup"),
        2,
        "--labels: class 2 'apply eye makeup' reads the same to the text encoder as class 0 'ApplyEyeMakeup'",
    ),
    Case("predict-label-with-line-break", predict("--labels", "run,ju\nmp"), 2, "the name of class 1 has a line break"),
    Case(
        "predict-label-file-duplicate-json-key",
        predict("--label-file", "labels.json"),
        2,
        "labels.json:3: the key '0' appears more than once",
        files={"labels.json": '{\n "0": "run",\n "0": "jump",\n "1": "swim"\n}\n'},
    ),
    Case(
        "predict-label-too-long",
        predict("--labels", "run," + "a very long label " * 30),
        2,
        "the label 'a very long label a very long label",
        not_phrase=("context_length=", "cannot load"),
    ),
    Case(
        "predict-label-file-too-long",
        predict("--label-file", "labels.csv"),
        2,
        "labels.csv: the label 'jump" + " and jump" * 40 + "' is too long for the text encoder's context length",
        files={"labels.csv": "id,name\n0,run\n1,jump" + " and jump" * 40 + "\n"},
    ),
    Case(
        "predict-label-file-with-bom-and-crlf-works",
        predict("--label-file", "labels.csv", "--json"),
        0,
        '"label": "swim"',
        files={"labels.csv": b"\xef\xbb\xbfid,name\r\n0,run\r\n1,jump\r\n2,swim\r\n"},
    ),
    Case("predict-device-unknown", predict("--device", "foo"), 2, "--device 'foo' is not a device. Use auto, cpu"),
    Case("predict-device-meta", predict("--device", "meta"), 2, "--device 'meta': tcclip runs on cpu, cuda or mps"),
    Case(
        "predict-device-cuda-without-gpu",
        predict("--device", "cuda"),
        2,
        "tcclip predict: error: --device cuda:",
        setup=no_gpu,
    ),
    Case(
        "predict-device-cuda-index-too-high",
        predict("--device", "cuda:3"),
        2,
        "--device cuda:3: this machine has 1 CUDA GPU(s)",
        setup=one_gpu,
    ),
    Case(
        "predict-checkpoint-is-a-folder",
        ("predict", "{video}", "--checkpoint", "ckpts"),
        2,
        "ckpts: --checkpoint is a folder, not a checkpoint file. Pass one of the checkpoint files in it: a.ckpt, b.pth",
        files={"ckpts/a.ckpt": "x", "ckpts/b.pth": "x", "ckpts/notes.txt": "x"},
    ),
    Case(
        "predict-checkpoint-missing",
        ("predict", "{video}", "--checkpoint", "nowhere.ckpt"),
        2,
        "nowhere.ckpt: --checkpoint: no such file",
    ),
    Case(
        "predict-checkpoint-random-bytes",
        ("predict", "{video}", "--checkpoint", "junk.ckpt"),
        2,
        "junk.ckpt: not a checkpoint",
        files={"junk.ckpt": bytes(range(256)) * 4},
    ),
    Case("predict-empty-labels", predict("--labels", " , "), 2, "--labels is empty. Give class names separated"),
    Case(
        "predict-label-file-is-a-folder",
        predict("--label-file", "labels.csv"),
        2,
        "labels.csv: is a folder, not a file",
        files={"labels.csv": DIR},
    ),
    Case("predict-top-k-zero", predict("--top-k", "0"), 2, "--top-k and --batch-size must be >= 1"),
    Case("predict-bad-views", predict("--views", "2x2"), 2, "argument --views: views need clips >= 1 and crops 1 or 3"),
    Case("predict-video-missing", ("predict", "nowhere.mp4", "--checkpoint", "{ckpt}"), 1, "nowhere.mp4: no such file"),
    Case(
        "explain-out-is-a-file",
        ("explain", "{video}", "--checkpoint", "{ckpt}", "--out", "taken"),
        2,
        "tcclip explain: error: --out taken: is a file, not a folder",
        files={"taken": "x"},
    ),
    Case(
        "explain-out-under-a-file",
        ("explain", "{video}", "--checkpoint", "{ckpt}", "--out", "taken/pictures"),
        2,
        "--out taken/pictures: cannot write there",
        files={"taken": "x"},
    ),
    Case(
        "explain-out-not-writable",
        ("explain", "{video}", "--checkpoint", "{ckpt}", "--out", "pictures"),
        2,
        "--out pictures: cannot write there (Permission denied)",
        setup=permission_denied,
    ),
    Case(
        "explain-video-missing",
        ("explain", "nowhere.mp4", "--checkpoint", "{ckpt}", "--out", "pictures"),
        2,
        "nowhere.mp4: no such file",
        absent=("pictures",),
    ),
    Case(
        "explain-layer-out-of-range",
        ("explain", "{video}", "--checkpoint", "{ckpt}", "--out", "pictures", "--layer", "5"),
        2,
        "--layer 5: the vision encoder of this checkpoint has layers 0..1",
    ),
    Case(
        "explain-device-unknown",
        ("explain", "{video}", "--checkpoint", "{ckpt}", "--out", "pictures", "--device", "gpu"),
        2,
        "--device 'gpu' is not a device",
        absent=("pictures",),
    ),
    # --- tcclip data check ------------------------------------------------------------------------------------
    Case(
        "data-check-missing-video-named-with-its-line",
        ("data", "check", "--list", "list.txt", "--root", ".", "--workers", "1", "--backend", "pyav"),
        1,
        "│ v/gone.mp4 │ list.txt:2 │ file not found",
        files={"list.txt": "v/folder.mp4 0\nv/gone.mp4 1\n", "v/folder.mp4": DIR},
        setup=wide_terminal,
    ),
    Case(
        "data-check-config-missing-video-named-with-its-line",
        ("data", "check", "--config", "c.yaml", "--workers", "1"),
        1,
        "│ v/gone.mp4 │ val/list:2, test/list:2 │ file not found",
        files={
            "c.yaml": LIST_CONFIG,
            "labels.csv": LABELS_3,
            "list.txt": "v/folder.mp4 0\nv/gone.mp4 1\n",
            "v/folder.mp4": DIR,
        },
        setup=wide_terminal,
    ),
    Case(
        "data-check-config-without-data-section",
        ("data", "check", "--config", "c.yaml"),
        2,
        "tcclip data: error: no 'data:' section in c.yaml. Pass the run's config file(s) with --config",
        files={"c.yaml": "trainer: {max_epochs: 1}\n"},
    ),
    Case("data-check-config-missing", ("data", "check", "--config", "no.yaml"), 2, "no.yaml: no such config file"),
    Case(
        "data-check-config-list-missing",
        ("data", "check", "--config", "c.yaml"),
        2,
        "list.txt: list or label file not found",
        files={"c.yaml": LIST_CONFIG, "labels.csv": LABELS_3},
    ),
    Case(
        "data-check-config-unknown-stage",
        ("data", "check", "--config", "c.yaml", "--stage", "train"),
        2,
        "--stage",
        files={"c.yaml": LIST_CONFIG, "labels.csv": LABELS_3, "list.txt": "v/a.mp4 0\n"},
    ),
    Case(
        "data-check-config-root-needs-a-value",
        ("data", "check", "--config", "c.yaml", "--root"),
        2,
        "--root needs a value. e.g. --data.init_args.root VALUE",
        files={"c.yaml": LIST_CONFIG},
    ),
    Case(
        "data-verify-config-without-data-section",
        ("data", "verify", "--config", "c.yaml", "--presence-only"),
        2,
        "no 'data:' section in c.yaml",
        files={"c.yaml": "model: {clip_weights: null}\n"},
    ),
    # --- checkpoints: conversion -------------------------------------------------------------------------------
    Case(
        "convert-checkpoint-random-bytes",
        ("convert-checkpoint", "junk.pth", "out.ckpt"),
        2,
        "junk.pth: not a checkpoint: it is neither a torch zip archive nor a pickle",
        files={"junk.pth": bytes(range(256)) * 4},
        not_phrase=("unsafe", "arbitrary code"),
        absent=("out.ckpt",),
    ),
    Case(
        "convert-checkpoint-empty-file",
        ("convert-checkpoint", "empty.pth", "out.ckpt"),
        2,
        "empty.pth: not a checkpoint: it is empty (0 bytes)",
        files={"empty.pth": b""},
        absent=("out.ckpt",),
    ),
    # --- the tcclip command itself --------------------------------------------------------------------------
    Case("help-lists-every-command", ("--help",), 0, "convert-checkpoint turn an official TC-CLIP .pth"),
    Case(
        "unknown-command",
        ("fitt", "--config", "x.yaml"),
        2,
        "tcclip: error: unknown command 'fitt'. Did you mean `tcclip fit`?",
    ),
    Case("no-command", (), 2, "usage: tcclip COMMAND"),
    # --- export, calibrate, rejection, timeline ---------------------------------------------------------------
    Case("export-missing-checkpoint", ("export", "nope.ckpt", "out"), 2, "nope.ckpt: no such checkpoint"),
    Case("export-plain-folder", ("export", "m", "out"), 2, "m: is a directory without config.json", files={"m": DIR}),
    Case(
        "exported-config-not-json",
        ("predict", "{video}", "--checkpoint", "exp", "--workers", "0"),
        2,
        "exp/config.json:1: not valid JSON",
        files={"exp/config.json": "{oops", "exp/model.safetensors": b"x"},
    ),
    Case(
        "calibrate-missing-config",
        ("calibrate", "--config", "no.yaml", "--ckpt_path", "{ckpt}"),
        2,
        "no.yaml: no such config file",
    ),
    Case("predict-reject-uncalibrated", predict("--reject"), 2, "no rejection threshold for the 'msp' score"),
    Case(
        "timeline-zero-stride",
        ("timeline", "{video}", "--checkpoint", "{ckpt}", "--stride", "0", "--quiet"),
        2,
        "window and stride must be positive seconds",
    ),
    # --- evaluation never runs on weights nobody asked for ------------------------------------------------------
    *(
        Case(
            f"{command}-ckpt-path-{which}-finds-nothing",
            (command, *demo("--ckpt_path", which)),
            2,
            f"tcclip {command}: error: --ckpt_path {which}: no readable checkpoint found; searched {{tmp}}/run and "
            "every folder below it",
            absent=("run",),
        )
        for command, which in (("test", "last"), ("validate", "best"), ("score", "last"), ("test", "best"))
    ),
    Case(
        "calibrate-ckpt-path-last-finds-nothing",
        ("calibrate", *demo("--ckpt_path", "last")),
        2,
        "tcclip calibrate: error: --ckpt_path last: no readable checkpoint found; searched {tmp}/run",
    ),
    Case(
        "test-ckpt-path-is-a-folder",
        ("test", *demo("--ckpt_path", "ckpts")),
        2,
        "ckpts: --ckpt_path is a folder, not a checkpoint. Pass one of its checkpoints (a.ckpt)",
        files={"ckpts/a.ckpt": "x"},
    ),
    Case("test-ckpt-path-missing", ("test", *demo("--ckpt_path", "gone.ckpt")), 2, "gone.ckpt: --ckpt_path: no such"),
    Case(
        "fit-ckpt-path-save-model-file",
        ("fit", *demo("--ckpt_path", "{ckpt}")),
        2,
        "is a save_model file: it holds weights but no training state, so `tcclip fit --ckpt_path` cannot resume from "
        "it. To train starting from these weights, pass --model.init_checkpoint",
    ),
    Case(
        "fit-resume-with-other-num-frames",
        ("fit", *demo("--ckpt_path", "{lckpt}", "--data.init_args.num_frames=4")),
        2,
        "data.init_args.num_frames is 4, but the checkpoint was trained with 8 frames; a resumed training must keep it",
    ),
    # --- degenerate statistics and rejection ------------------------------------------------------------------
    Case(
        "calibrate-too-few-videos",
        ("calibrate", *demo("--ckpt_path", "{lckpt}", "--quiet")),
        2,
        "only 3 validation video(s) to calibrate on; at least 20 are needed",
        absent=("{lckpt}.calibration.json",),
    ),
    Case(
        "calibrate-min-videos-below-two",
        ("calibrate", *demo("--ckpt_path", "{lckpt}", "--min-videos", "1")),
        2,
        "argument --min-videos: must be >= 2, got 1",
    ),
    Case("predict-reject-threshold-above-range", predict("--reject-threshold", "5"), 2, "'msp' threshold 5 rejects"),
    Case(
        "predict-reject-threshold-below-range",
        predict("--reject-threshold", "0.1"),
        2,
        "the 'msp' threshold 0.1 accepts every video: with 3 classes the score lies in [0.333333, 1]",
    ),
    Case(
        "predict-reject-one-class",
        predict("--labels", "run", "--reject-threshold", "0.5"),
        2,
        "with one class the 'msp' score is always 1, so it cannot reject anything. Use --reject-score max_logit",
    ),
    Case(
        "predict-reject-score-without-reject",
        predict("--reject-score", "energy"),
        2,
        "--reject-score energy (reject_score=) chooses the score of the rejection, but no rejection is asked for",
    ),
    Case(
        "timeline-reject-score-without-reject",
        ("timeline", "{video}", "--checkpoint", "{ckpt}", "--reject-score", "mcm", "--out", "tl"),
        2,
        "but no rejection is asked for",
        absent=("tl",),
    ),
    # --- every output all or nothing ----------------------------------------------------------------------------
    Case(
        "timeline-out-holds-other-files",
        ("timeline", "{video}", "--checkpoint", "{ckpt}", "--quiet", "--out", "tl"),
        2,
        "--out tl: holds files that this command does not write (notes.txt)",
        files={"tl/notes.txt": "mine\n"},
        check=file_untouched("tl/notes.txt", "mine\n"),
    ),
    Case(
        "timeline-out-is-a-file",
        ("timeline", "{video}", "--checkpoint", "{ckpt}", "--quiet", "--out", "tl"),
        2,
        "--out tl: is a file, not a folder",
        files={"tl": "mine\n"},
    ),
    Case(
        "timeline-disk-full-keeps-the-earlier-timeline",
        ("timeline", "{video}", "--checkpoint", "{ckpt}", "--quiet", "--out", "tl", "--refine", "0"),
        2,
        "tl: cannot write the timeline: the disk is full; nothing was written under this name",
        files={"tl/windows.csv": "earlier\n"},
        setup=disk_full_after_first_file,
        check=earlier_timeline_kept,
    ),
    Case(
        "timeline-out-not-writable",
        ("timeline", "{video}", "--checkpoint", "{ckpt}", "--quiet", "--out", "tl"),
        2,
        "--out tl: cannot write there (Permission denied)",
        setup=permission_denied,
        absent=("tl",),
    ),
    Case(
        "timeline-ctrl-c-keeps-the-earlier-timeline",
        ("timeline", "{video}", "--checkpoint", "{ckpt}", "--quiet", "--out", "tl", "--refine", "0"),
        130,
        "tcclip timeline: interrupted",
        files={"tl/windows.csv": "earlier\n"},
        setup=raise_in("tcclip.inference.timeline_outputs.plot_timeline", KeyboardInterrupt()),
        check=earlier_timeline_kept,
    ),
    Case(
        "export-replaces-an-earlier-export-whole",
        ("export", "{ckpt}", "exp"),
        0,
        "wrote exp: README.md, config.json, model.safetensors",
        files=EARLIER_EXPORT,
        not_phrase=("model.onnx",),
        check=only_new_export,
    ),
    Case(
        "export-disk-full-keeps-the-earlier-export",
        ("export", "{ckpt}", "exp"),
        2,
        "exp: cannot write the export: the disk is full; nothing was written under this name",
        files=EARLIER_EXPORT,
        setup=raise_in("tcclip.training.portable.write_exported", OSError(28, "No space left on device")),
        check=earlier_export_kept,
    ),
    Case(
        "export-out-not-writable",
        ("export", "{ckpt}", "exp"),
        2,
        "OUT_DIR exp: cannot write there (Permission denied)",
        setup=permission_denied,
        absent=("exp",),
    ),
    Case(
        "export-out-is-a-file",
        ("export", "{ckpt}", "exp"),
        2,
        "OUT_DIR exp: is a file, not a folder",
        files={"exp": "mine\n"},
        check=file_untouched("exp", "mine\n"),
    ),
    Case(
        "calibrate-disk-full",
        ("calibrate", *demo("--ckpt_path", "{lckpt}", "--quiet", "--min-videos", "3")),
        2,
        "cannot write the calibration record: the disk is full; nothing was written under this name",
        setup=raise_in("tcclip.utils.outputs._fsync_file", OSError(28, "No space left on device")),
        absent=("{lckpt}.calibration.json",),
    ),
    Case(
        "fit-disk-full-is-one-paragraph",
        ("fit", *demo("--trainer.max_epochs=1")),
        2,
        "tcclip fit: error: run/lightning_logs/version_0/events.out.tfevents: the disk is full; the command stopped",
        setup=raise_in("tcclip.training.module.TCCLIPModule.configure_optimizers", ENOSPC),
    ),
    Case(
        "fit-read-only-root",
        ("fit", *demo("--trainer.max_epochs=1")),
        2,
        "trainer.default_root_dir cannot be written",
        setup=raise_in("tcclip.utils.outputs._fsync_file", PermissionError(13, "Permission denied")),
        absent=("run",),
    ),
    # --- Ctrl-C: exit 130, one line ------------------------------------------------------------------------------
    Case(
        "predict-ctrl-c",
        predict(),
        130,
        "tcclip predict: interrupted",
        setup=raise_in("tcclip.inference.predict.video_view_logits", KeyboardInterrupt()),
    ),
    Case(
        "fit-ctrl-c-says-where-it-saved",
        ("fit", *demo("--trainer.max_epochs=1")),
        130,
        "tcclip fit: interrupted; Stopped at epoch 0, global step 0; the weights from before the stop are saved in "
        "run/lightning_logs/version_0/checkpoints/last.ckpt. To resume, run the same command with --ckpt_path last.",
        setup=raise_in("tcclip.training.module.TCCLIPModule.training_step", KeyboardInterrupt()),
        not_phrase=("Detected KeyboardInterrupt",),
    ),
    # --- every value checked before work starts, its key named ---------------------------------------------------
    Case(
        "fit-negative-tome-r",
        ("fit", *demo("--model.model_config.tome_r=-2")),
        2,
        "model_config.tome_r: must be >= 1, got -2",
        absent=("run",),
    ),
    Case("fit-negative-lr", ("fit", *demo("--model.optim.lr=-0.1")), 2, "model.optim.lr: must be > 0", absent=("run",)),
    Case(
        "fit-total-batch-size-zero",
        ("fit", *demo("--model.optim.total_batch_size=0")),
        2,
        "model.optim.total_batch_size: must be an integer >= 1, or null",
        absent=("run",),
    ),
    Case(
        "fit-total-batch-size-not-a-multiple-of-the-batch",
        ("fit", *demo("--model.optim.total_batch_size=12", "--data.init_args.batch_size=5")),
        2,
        "model.optim.total_batch_size: 12 is not divisible by data batch_size 5 x 1 device(s) = 5",
        absent=("run",),
    ),
    Case(
        "fit-accumulation-given-against-the-total-batch",
        ("fit", *demo("--trainer.accumulate_grad_batches=3")),
        2,
        "trainer.accumulate_grad_batches: 3 conflicts with model.optim.total_batch_size=8",
        absent=("run",),
    ),
    # --- settings of earlier releases, flat under model.: named with their new place ------------------------------
    *(
        Case(
            f"fit-earlier-spelling-{old}",
            ("fit", *demo(f"--model.{old}={value}")),
            2,
            f"model.{old}: this setting is now model.{new} (on the command line). Write model.{new} instead",
            absent=("run",),
        )
        for old, new, value in (
            ("lr", "optim.lr", "0.001"),
            ("total_batch_size", "optim.total_batch_size", "8"),
            ("mixup", "loss.mixup", "false"),
        )
    ),
    Case(
        "test-earlier-spelling-in-a-config-file",
        ("test", "--config", "old.yaml", "--data.init_args.root={data}", "--trainer.default_root_dir=run"),
        2,
        "old.yaml: model.lr: this setting is now model.optim.lr (in a config file)",
        files={"old.yaml": "model:\n  clip_weights: null\n  lr: 1.0e-3\n  warmup_epochs: 1\n"},
        absent=("run",),
    ),
    *(
        Case(
            f"{command}-unknown-protocol",
            (command, *demo("--data.init_args.protocol=banana")),
            2,
            "data.init_args.protocol: 'banana' is unknown. Choose one of zero_shot, few_shot",
            not_phrase=("Union subtypes",),
        )
        for command in ("fit", "validate")
    ),
    *(
        Case(f"fit-{key}-{value}", ("fit", *demo(f"--data.init_args.{key}={value}")), 2, phrase, absent=("run",))
        for key, value, phrase in (
            ("batch_size", "0", "data.init_args.batch_size: must be >= 1, got 0"),
            ("num_workers", "-1", "data.init_args.num_workers: must be >= 0"),
            ("num_crop", "2", "data.init_args.num_crop: must be 1 or 3"),
        )
    ),
    Case(
        "fit-negative-max-epochs",
        ("fit", *demo("--trainer.max_epochs=-5")),
        2,
        "trainer: `max_epochs` must be a non-negative integer or -1. You passed in -5",
    ),
    Case(
        "fit-one-class-dataset",
        ("fit", *demo("--trainer.max_epochs=1", root="{data1}")),
        2,
        "the training set has 1 class(es) ('MoveLeft'); classification needs at least two",
    ),
    Case(
        "fit-clip-weights-text-file",
        ("fit", *demo("--model.clip_weights=w.txt")),
        2,
        "model.clip_weights: cannot use 'w.txt': w.txt: not a readable weights file",
        files={"w.txt": "not weights at all\n"},
        not_phrase=("Weights only load failed",),
    ),
    Case(
        "predict-checkpoint-stores-a-string-for-a-number",
        ("predict", "{video}", "--checkpoint", "{strckpt}", "--workers", "0"),
        2,
        "{strckpt}: model_config.tome_r: must be an integer, got str '4'",
    ),
    Case(
        "predict-views-beyond-memory",
        predict("--views", "100000000x1"),
        2,
        "--views 100000000x1 with --batch-size 1 (views=, batch_size=) scores 100,000,000 clips of 4 frames in one "
        "pass: about",
    ),
    Case(
        "timeline-stride-under-a-millisecond",
        ("timeline", "{video}", "--checkpoint", "{ckpt}", "--stride", "0.000001", "--out", "tl"),
        2,
        "--stride 1e-06 is under a millisecond",
        absent=("tl",),
    ),
    Case(
        "timeline-too-many-windows",
        ("timeline", "{video}", "--checkpoint", "{ckpt}", "--window", "0.01", "--stride", "0.01", "--out", "tl"),
        2,
        "windows, more than the 5 a timeline scores",
        setup=few_windows,
        absent=("tl",),
    ),
    Case(
        "timeline-batch-beyond-memory",
        ("timeline", "{video}", "--checkpoint", "{ckpt}", "--batch-size", "100000000", "--out", "tl"),
        2,
        "--batch-size 100000000 (batch_size=) windows scores 100,000,000 clips of 4 frames in one pass: about",
        absent=("tl",),
    ),
    Case(
        "timeline-negative-window",
        ("timeline", "{video}", "--checkpoint", "{ckpt}", "--window", "-1", "--out", "tl"),
        2,
        "--window (window=) must be positive seconds, got -1",
        absent=("tl",),
    ),
    Case(
        "data-synth-size-zero",
        ("data", "synth", "--out", "synth", "--size", "0"),
        2,
        "--size must be even and at least 16 pixels a side, got 0x0",
        absent=("synth",),
    ),
    Case(
        "data-synth-out-is-a-file",
        ("data", "synth", "--out", "taken", "--num-classes", "2"),
        2,
        "--out taken: is a file, not a folder",
        files={"taken": "mine\n"},
        check=file_untouched("taken", "mine\n"),
    ),
    # --- messages that name the file, the option and the fix -----------------------------------------------------
    *(
        Case(f"fit-{name}-config", ("fit", "--config", "c.yaml"), 2, phrase, files={"c.yaml": text})
        for name, text, phrase in (
            ("empty", "", "c.yaml: the config file is empty (or holds only comments)"),
            ("comment-only", "# nothing here\n", "c.yaml: the config file is empty (or holds only comments)"),
            ("list", "- trainer\n", "c.yaml: the config holds a list, not a mapping of settings"),
            ("bad-yaml", "trainer:\n  max_epochs: [1\n", "c.yaml:3: not valid YAML"),
        )
    ),
    Case(
        "calibrate-empty-config",
        ("calibrate", "--config", "c.yaml", "--ckpt_path", "{ckpt}"),
        2,
        "c.yaml: the config file is empty (or holds only comments)",
        files={"c.yaml": "# nothing\n"},
    ),
    Case(
        "fit-config-root-hides-the-environment-root",
        ("fit", *demo(root="nowhere")),
        2,
        "nowhere: the dataset root does not exist (set by data.init_args.root). The config sets "
        "data.init_args.root, so $TCCLIP_DATA_ROOT=/elsewhere/videos is not used. Override the root on the command "
        "line: --data.init_args.root /elsewhere/videos",
        setup=env_root_elsewhere,
    ),
    # --- sweep selections: an empty selection is an error that says what it selected from, before any output ---------
    *(
        Case(f"sweep-{name}", ("sweep", *argv, "--smoke"), 2, phrase, absent=("runs", "results"))
        for name, argv, phrase in (
            ("empty-grid", ("--grid", ""), "--grid '' names no protocol"),
            ("zero-shots", ("--grid", "few_shot", "--shots", "0"), "0 is not one of the paper's values (2, 4, 8, 16)"),
            ("zero-seeds", ("--grid", "all", "--seeds", "0"), "0 is not one of the paper's values (1, 2, 3)"),
            (
                "only-matches-nothing",
                ("--grid", "few_shot", "--only", "nomatch*"),
                "leaves no cell of the grid few_shot",
            ),
        )
    ),
]

# ---------------------------------------------------------------------------------------------------- the runner


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from tcclip.model.config import TCCLIPConfig
    from tcclip.model.factory import create_model
    from tcclip.training.checkpoints import save_model

    torch.manual_seed(0)
    cfg = TCCLIPConfig(arch="test-tiny", num_frames=4, context_token_k=4, tome_r=4, prompt_generation_layer_level=(2,))
    model = create_model(cfg, list(CKPT_CLASSES), clip_weights=None)
    return save_model(model, tmp_path_factory.mktemp("bad_input_ckpt") / "tiny.ckpt")


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory) -> Path:
    import numpy as np

    from tcclip.data.synth import render_video, write_video

    path = tmp_path_factory.mktemp("bad_input_video") / "grow.mp4"
    return write_video(path, render_video("Grow", 8, 40, 40, np.random.default_rng(0)))


@pytest.fixture(scope="session")
def tiny_lightning_checkpoint(tmp_path_factory) -> Path:
    """The network of configs/demo.yaml in the layout `tcclip fit` saves, under a run's checkpoints/ folder."""
    import torch

    from tcclip.model.config import TCCLIPConfig
    from tcclip.model.factory import create_model
    from tcclip.training.checkpoints import lightning_checkpoint

    torch.manual_seed(0)
    cfg = TCCLIPConfig(
        arch="test-tiny", num_frames=8, positional_embedding_type="joint", context_token_k=8, tome_r=4,
        prompt_generation_layer_level=(2,),
    )  # fmt: skip
    names = ["MoveLeft", "MoveRight", "MoveUp"]
    checkpoint = lightning_checkpoint(create_model(cfg, names, clip_weights=None))
    checkpoint["tcclip"] = {"train_class_names": names}
    folder = tmp_path_factory.mktemp("lightning_ckpt") / "lightning_logs" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(checkpoint, folder / "last.ckpt")
    return folder / "last.ckpt"


@pytest.fixture(scope="session")
def checkpoint_with_a_string_setting(tiny_checkpoint, tmp_path_factory) -> Path:
    import torch

    stored = torch.load(tiny_checkpoint, weights_only=True)
    stored["model_config"]["tome_r"] = "4"
    path = tmp_path_factory.mktemp("string_ckpt") / "string.ckpt"
    torch.save(stored, path)
    return path


@pytest.fixture(scope="session")
def one_class_data(tmp_path_factory) -> Path:
    from tcclip.data.custom_splits import make_synthetic_protocol_splits
    from tcclip.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("one_class_data")
    make_synthetic_dataset(root, num_classes=1, videos_per_class=3, num_frames=(8, 8), size=32, seed=0)
    make_synthetic_protocol_splits(root)
    return root


def _substitute(text: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _placeholders(case: Case, tmp_path: Path, request) -> dict[str, str]:
    words = " ".join([*case.argv, case.phrase, *case.absent, *(v for v in case.files.values() if isinstance(v, str))])
    values = {"tmp": str(tmp_path)}
    if "{ckpt}" in words:
        values["ckpt"] = str(request.getfixturevalue("tiny_checkpoint"))
    if "{video}" in words:
        values["video"] = str(request.getfixturevalue("tiny_video"))
    if "{config}" in words:
        values["config"] = str(REPO / "configs" / "demo.yaml")
    for key, fixture in (
        ("lckpt", "tiny_lightning_checkpoint"),
        ("strckpt", "checkpoint_with_a_string_setting"),
        ("data1", "one_class_data"),
        ("data", "data_synth"),
    ):
        if "{" + key + "}" in words:
            values[key] = str(request.getfixturevalue(fixture))
    return values


def run_tcclip(argv: list[str], capsys, in_subprocess: bool = False) -> tuple[int, str]:
    """Exit code and stdout + stderr of `tcclip argv` (in this process unless asked)."""
    if in_subprocess:
        import subprocess

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-m", "tcclip.cli", *argv], capture_output=True, text=True, env=env)
        return done.returncode, done.stdout + done.stderr
    import signal

    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl-C after one
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _prepare(case: Case, tmp_path: Path, request) -> tuple[dict[str, str], list[str]]:
    """Write the row's files; returns the placeholder values and the command line."""
    values = _placeholders(case, tmp_path, request)
    for rel, content in case.files.items():
        path = tmp_path / _substitute(rel, values)
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_substitute(content, values), encoding="utf-8")
    return values, [_substitute(a, values) for a in case.argv]


def _check(case: Case, tmp_path: Path, values: Mapping[str, str], code: int, output: str) -> None:
    flat = " ".join(output.split())
    assert "Traceback" not in output, output
    assert code == case.exit_code, f"exit code {code}, expected {case.exit_code}; output:\n{output}"
    assert " ".join(_substitute(case.phrase, values).split()) in flat, output
    for phrase in case.not_phrase:
        assert phrase not in flat, output
    for rel in case.absent:
        assert not (tmp_path / _substitute(rel, values)).exists(), f"{rel} was left behind"
    if case.check is not None:
        case.check(tmp_path)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input(case: Case, tmp_path: Path, request, capsys, monkeypatch):
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    monkeypatch.chdir(tmp_path)
    if case.setup is not None:
        case.setup(monkeypatch)
    values, argv = _prepare(case, tmp_path, request)
    code, output = run_tcclip(argv, capsys, case.subprocess)
    _check(case, tmp_path, values, code, output)


def console_script() -> Path:
    """The `tcclip` command that `pip install` made, next to this interpreter (as a user runs it)."""
    import shutil

    script = Path(sys.executable).with_name("tcclip")
    found = script if script.is_file() else shutil.which("tcclip")
    if found is None:
        pytest.fail("the tcclip console script is not installed (pip install -e . makes it)")
    return Path(found)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.setup is None], ids=lambda case: case.id)
def test_bad_input_rows_with_the_console_script(case: Case, tmp_path: Path, request):
    """Every row that needs no change to the world, through the installed `tcclip` in a child process: what the
    user sees, start-up and worker processes included (a traceback anywhere fails)."""
    import subprocess

    values, argv = _prepare(case, tmp_path, request)
    env = {k: v for k, v in os.environ.items() if k not in ("TCCLIP_DATA_ROOT", "PYTHONPATH")}
    done = subprocess.run(
        [str(console_script()), *argv], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )
    _check(case, tmp_path, values, done.returncode, done.stdout + done.stderr)


@pytest.mark.slow
def test_a_real_ctrl_c_ends_in_one_line_exit_130_and_no_partial_file(tmp_path):
    """SIGINT, as a terminal's Ctrl-C sends it, in the middle of `tcclip data synth`."""
    import signal
    import subprocess
    import time

    from stop_helpers import default_sigint

    argv = [str(console_script()), "data", "synth", "--out", "synth", "--num-classes", "12"]
    child = subprocess.Popen([*argv, "--videos-per-class", "40", "--size", "96"], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)  # fmt: skip
    videos = tmp_path / "synth" / "videos"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (videos.is_dir() and any(videos.rglob("*.mp4"))):
        time.sleep(0.1)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, (out, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "tcclip data: interrupted", err
    assert not [p for p in (tmp_path / "synth").rglob("*") if ".tmp-" in p.name], "a temporary file was left"
    assert not (tmp_path / "synth" / "train.txt").exists()  # the lists appear only with every video


# ---------------------------------------------------------------------------------------------------- beyond the table


def test_help_gives_every_command_one_line(capsys):
    assert cli.main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in cli.known_commands():
        rows = [line for line in lines if line.split()[:1] == [name]]
        assert len(rows) == 1 and len(rows[0].split()) > 3, (name, rows)
    assert len(cli.known_commands()) == len(set(cli.known_commands())) >= 9


def test_error_prefix_names_only_known_commands(capsys, tmp_path):
    assert cli.main(["splits", "make", "--list", "x", "--labels", str(tmp_path / "no.csv"), "--out", "o"]) == 2
    assert capsys.readouterr().err.startswith("tcclip splits: error: ")
    assert cli.main([str(tmp_path / "config.yaml")]) == 2
    assert capsys.readouterr().err.startswith("tcclip: error: unknown command")


def test_explain_writes_all_pictures_or_none(tiny_checkpoint, tiny_video, tmp_path, monkeypatch, capsys):
    from tcclip.inference import explain

    def broken(expl):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(explain, "render_summary", broken)  # the last picture fails, after three are drawn
    argv = ["explain", str(tiny_video), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "pictures")]
    assert cli.main(argv) == 2
    assert "cannot write the pictures (No space left on device); none was written" in capsys.readouterr().err
    assert list((tmp_path / "pictures").iterdir()) == []  # no picture, no temporary file

    monkeypatch.undo()
    assert cli.main(argv) == 0
    names = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    assert names == ["context_tokens.png", "explanation.json", "seeds.png", "summary.png", "top_k.png"]


def test_outputs_are_readable_like_any_new_file(tmp_path):
    from tcclip.utils.outputs import atomic_write_texts

    (path,) = atomic_write_texts({tmp_path / "a.txt": "x\n"})
    probe = tmp_path / "probe"
    probe.write_text("")
    assert path.stat().st_mode & 0o777 == probe.stat().st_mode & 0o777


def test_predict_reads_a_video_with_a_unicode_and_very_long_path(tiny_checkpoint, tiny_video, tmp_path, capsys):
    import json
    import shutil

    folder = tmp_path / LONG / "vidéos 跳跃"
    folder.mkdir(parents=True)
    video = shutil.copy(tiny_video, folder / "saut à la perche 跳.mp4")
    argv = ["predict", str(video), "--checkpoint", str(tiny_checkpoint), "--json", "--workers", "0", "--views", "1x1"]
    assert cli.main(argv) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["video"] == str(video)
    assert sorted(p["label"] for p in record["predictions"]) == sorted(CKPT_CLASSES)


def test_fit_reports_a_bad_label_file_that_lightning_cli_wraps(data_synth, tmp_path, capsys):
    import shutil

    root = shutil.copytree(data_synth, tmp_path / "data")
    (root / "labels.csv").write_text('id,name\n0,MoveLeft\n1,"MoveRight\n2,Grow\n')
    argv = ["fit", "--config", str(REPO / "configs" / "demo.yaml"), f"--data.init_args.root={root}"]
    assert cli.main([*argv, f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.accelerator=cpu"]) == 2
    err = capsys.readouterr().err
    assert f"tcclip fit: error: {root / 'labels.csv'}:3: the name of class 1 has a line break" in err
    assert "Traceback" not in err and "Union subtypes" not in err


def test_only_errors_wrapped_by_a_library_are_unwrapped():
    def ours():
        try:
            raise UserError("bad label")
        except UserError:
            raise KeyError("a bug while handling it") from None

    with pytest.raises(KeyError) as bug:
        ours()
    assert cli.wrapped_user_error(bug.value) is None  # ours: a bug keeps its traceback


def test_python_api_refuses_class_lists_that_would_split_a_probability():
    from types import SimpleNamespace

    from tcclip.data.labels import LabelFileError
    from tcclip.inference.scoring import use_labels

    model = SimpleNamespace(class_names=["run"], set_class_names=lambda names: pytest.fail("must not be reached"))
    for labels, message in (
        (["Run", "Run"], "the class name 'Run' appears twice"),
        (["jump", "run", "Jump"], "class 2 'Jump' reads the same to the text encoder as class 0 'jump'"),
        (["jump\nrun"], "line break"),
        ([], "the label list is empty"),
    ):
        with pytest.raises(ValueError, match=message) as error:
            use_labels(model, labels)
        assert isinstance(error.value, LabelFileError)


def test_config_settings_given_inline_are_left_to_jsonargparse(tmp_path, monkeypatch):
    from tcclip.cli.config_files import check_config_files, config_paths

    monkeypatch.chdir(tmp_path)
    argv = ["--config", "a.yaml", "--config=trainer: {max_epochs: 1}", "-c", "b.yaml", "--model.lr=1"]
    assert config_paths(argv) == ["a.yaml", "trainer: {max_epochs: 1}", "b.yaml"]
    check_config_files(["--config", "trainer: {max_epochs: 1}"])  # jsonargparse's inline form: not a file name
    with pytest.raises(UserError, match="missing.yaml: no such config file"):
        check_config_files(["--config", "missing.yaml"])
