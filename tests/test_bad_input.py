"""Every mistake a user can make on the command line gets one clear message, the right exit code and no traceback.

The suite is a table: each `Case` row writes some files into a fresh folder, runs `tcclip <argv>` in this process
(`tcclip.cli.main`) and checks the exit code, a phrase of the message and that no traceback was printed. Adding a
case is adding a row to `CASES`.

Placeholders, replaced in argv, in file contents and in `phrase`:
    {tmp}    the test's folder (also the working directory)
    {ckpt}   a tiny TC-CLIP checkpoint whose classes are `CKPT_CLASSES` (built once per session, only if used)
    {video}  a small real mp4 video (built once per session, only if used)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch  # noqa: F401  (first imported outside captured output: it keeps the stream it logs to)
import pytest

from tcclip import cli
from tcclip.errors import UserError

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

    from tcclip.model.checkpoint import save_model
    from tcclip.model.config import TCCLIPConfig
    from tcclip.model.factory import create_model

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


def _substitute(text: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _placeholders(case: Case, tmp_path: Path, request) -> dict[str, str]:
    words = " ".join([*case.argv, case.phrase, *(v for v in case.files.values() if isinstance(v, str))])
    values = {"tmp": str(tmp_path)}
    if "{ckpt}" in words:
        values["ckpt"] = str(request.getfixturevalue("tiny_checkpoint"))
    if "{video}" in words:
        values["video"] = str(request.getfixturevalue("tiny_video"))
    return values


def run_tcclip(argv: list[str], capsys, in_subprocess: bool = False) -> tuple[int, str]:
    """Exit code and stdout + stderr of `tcclip argv` (in this process unless asked)."""
    if in_subprocess:
        import subprocess

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-m", "tcclip.cli", *argv], capture_output=True, text=True, env=env)
        return done.returncode, done.stdout + done.stderr
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input(case: Case, tmp_path: Path, request, capsys, monkeypatch):
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    monkeypatch.chdir(tmp_path)
    values = _placeholders(case, tmp_path, request)
    if case.setup is not None:
        case.setup(monkeypatch)
    for rel, content in case.files.items():
        path = tmp_path / _substitute(rel, values)
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_substitute(content, values), encoding="utf-8")
    argv = [_substitute(a, values) for a in case.argv]

    code, output = run_tcclip(argv, capsys, case.subprocess)

    flat = " ".join(output.split())
    assert "Traceback" not in output, output
    assert code == case.exit_code, f"exit code {code}, expected {case.exit_code}; output:\n{output}"
    assert " ".join(_substitute(case.phrase, values).split()) in flat, output
    for phrase in case.not_phrase:
        assert phrase not in flat, output
    for rel in case.absent:
        assert not (tmp_path / rel).exists(), f"{rel} was left behind"
    if case.check is not None:
        case.check(tmp_path)


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
    from tcclip import explain

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
    from tcclip.outputs import atomic_write_texts

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
    from tcclip.inference import use_labels

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
