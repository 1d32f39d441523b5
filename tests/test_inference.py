"""`tcclip.predict` and `tcclip predict`: the test pipeline on real encoded videos, batching, failures, output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tcclip
from tcclip.cli import commands as cli
from tcclip.data.synth import render_video, write_video
from tcclip.data.transforms import TestTransform
from tcclip.data.video_reader import VideoDecodeError, open_video
from tcclip.inference import predict as inference
from tcclip.inference.predict import Prediction, Views, expand_video_paths, load_clip_views, predict
from tcclip.model.config import TCCLIPConfig
from tcclip.model.factory import create_model

CLASSES = ["move left", "move right", "grow", "shrink", "stand still"]
CFG = TCCLIPConfig(arch="test-tiny", num_frames=4, context_token_k=4, tome_r=4, prompt_generation_layer_level=(2,))


def save_tiny_checkpoint(model, path: Path) -> Path:
    """Our checkpoint format, written by the checkpoint module (shared with test_explain)."""
    from tcclip.training import checkpoints

    checkpoints.save_model(model, path)
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(CFG, CLASSES, clip_weights=None).eval()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """clips/a.mp4, clips/sub/b.avi (real encodes), clips/notes.txt and a broken clips/broken.mp4."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    write_video(root / "a.mp4", render_video("MoveLeft", 12, 48, 64, rng))
    write_video(root / "sub" / "b.avi", render_video("Grow", 9, 40, 64, rng))
    (root / "notes.txt").write_text("not a video\n")
    (root / "broken.mp4").write_bytes(b"\x00\x01 this is not an mp4 " * 20)
    return root


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory) -> Path:
    return save_tiny_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def test_views_parse():
    assert Views.parse("2x1") == Views(2, 1)
    assert Views.parse("4") == Views(4, 1)
    assert Views.parse("1X3").count == 3
    for bad in ("two", "2x2", "0x1", "1x1x1"):
        with pytest.raises(ValueError):
            Views.parse(bad)


def test_predict_one_video_gives_sorted_label_probability_pairs(model, videos):
    result = predict(model, videos / "a.mp4", top_k=3)
    assert len(result) == 3 and all(isinstance(p, Prediction) for p in result)
    labels, probs = zip(*result, strict=True)
    assert set(labels) <= set(CLASSES) and len(set(labels)) == 3
    assert list(probs) == sorted(probs, reverse=True) and all(0.0 <= p <= 1.0 for p in probs)


def test_predict_averages_the_softmax_of_every_view(model, videos):
    """All classes: the probabilities are the mean of the per-view softmax, on the evaluation pipeline."""
    result = predict(model, str(videos / "a.mp4"), top_k=len(CLASSES), views="2x3")
    reader = open_video(videos / "a.mp4")
    from tcclip.data.sampling import test_indices

    indices = [i for clip in test_indices(len(reader), CFG.num_frames, 2) for i in clip]
    clips = TestTransform(CFG.clip.vision.image_size, num_crop=3, num_frames=CFG.num_frames)(
        reader.get_frames(indices)
    )  # [6, T, 3, S, S]
    assert clips.shape[:2] == (6, CFG.num_frames)
    with torch.no_grad():
        expected = model(clips).softmax(-1).mean(0)
    got = dict(result)
    assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)
    for i, name in enumerate(CLASSES):
        assert got[name] == pytest.approx(float(expected[i]), abs=1e-5)


def test_predict_accepts_decoded_frames_and_lists(model, videos):
    reader = open_video(videos / "sub" / "b.avi")
    frames = reader.get_frames(range(len(reader)))
    from_file = predict(model, videos / "sub" / "b.avi", top_k=2)
    from_frames = predict(model, frames, top_k=2)
    assert [p.label for p in from_frames] == [p.label for p in from_file]
    assert [p.probability for p in from_frames] == pytest.approx([p.probability for p in from_file], abs=1e-5)
    both = predict(model, [videos / "a.mp4", frames], top_k=2, batch_size=1)
    assert len(both) == 2 and [p.probability for p in both[1]] == pytest.approx([p.probability for p in from_frames])


def test_batching_does_not_change_predictions(model, videos):
    paths = [videos / "a.mp4", videos / "sub" / "b.avi"]
    one_by_one = predict(model, paths, top_k=5, batch_size=1)
    together = predict(model, paths, top_k=5, batch_size=2)
    for a, b in zip(one_by_one, together, strict=True):
        assert [p.label for p in a] == [p.label for p in b]
        assert [p.probability for p in a] == pytest.approx([p.probability for p in b], abs=1e-5)


def test_predict_with_new_labels_replaces_the_class_list(videos):
    torch.manual_seed(0)
    fresh = create_model(CFG, CLASSES, clip_weights=None)
    result = predict(fresh, videos / "a.mp4", labels=["jumping", "swimming"], top_k=5)
    assert sorted(p.label for p in result) == ["jumping", "swimming"]
    assert list(fresh.class_names) == ["jumping", "swimming"]


def test_predict_raises_on_an_unreadable_video(model, videos):
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        predict(model, videos / "broken.mp4")


def test_load_clip_views_shape(videos):
    clips = load_clip_views(videos / "a.mp4", num_frames=3, input_size=16, views="2x1")
    assert clips.shape == (2, 3, 3, 16, 16) and clips.dtype == torch.float32


def test_expand_video_paths(videos):
    paths, problems = expand_video_paths(
        [videos, str(videos / "*.mp4"), videos / "missing.mp4", str(videos / "none-*.webm")]
    )
    # the folder (recursive, video endings only), then the pattern's matches not seen yet
    assert paths == [videos / "a.mp4", videos / "broken.mp4", videos / "sub" / "b.avi"]
    assert [item for item, _ in problems] == [str(videos / "missing.mp4"), str(videos / "none-*.webm")]


def test_cli_prints_a_table_per_video_and_fails_at_the_end_for_a_broken_one(ckpt, videos, capsys):
    args = [str(videos), "--checkpoint", str(ckpt), "--labels", ",".join(CLASSES), "--top-k", "2"]
    code = cli.run_command("predict", [*args, "--workers", "0", "--batch-size", "2", "--views", "1x1"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "a.mp4" in out and "b.avi" in out and "probability" in out
    assert "broken.mp4" in err and "1 of 3" in err


def test_cli_json_lines_through_the_tcclip_command(ckpt, videos, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(CLASSES)))
    argv = ["predict", str(videos / "a.mp4"), str(videos / "broken.mp4"), str(videos / "sub" / "b.avi")]
    code = cli.main([*argv, "--checkpoint", str(ckpt), "--label-file", str(labels), "--json", "--workers", "0"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert [Path(r["video"]).name for r in records] == ["a.mp4", "broken.mp4", "b.avi"]
    assert "error" in records[1] and "predictions" not in records[1]
    for record in (records[0], records[2]):
        assert len(record["predictions"]) == 5
        assert {p["label"] for p in record["predictions"]} == set(CLASSES)
        assert sum(p["probability"] for p in record["predictions"]) == pytest.approx(1.0, abs=1e-4)
    assert records[0]["predictions"] == [
        p._asdict() | {"probability": pytest.approx(p.probability, abs=1e-5)}
        for p in predict(tcclip.load_model(ckpt, CLASSES), videos / "a.mp4")
    ]


def test_cli_without_labels_uses_the_checkpoint_classes_and_exits_zero(ckpt, videos, capsys):
    code = cli.run_command("predict", [str(videos / "a.mp4"), "--checkpoint", str(ckpt), "--workers", "0", "--json"])
    (line,) = capsys.readouterr().out.splitlines()
    assert code == 0 and {p["label"] for p in json.loads(line)["predictions"]} == set(CLASSES)


def test_read_labels():
    assert inference.read_labels(" riding a bike,swimming ,, ", None) == ["riding a bike", "swimming"]
    assert inference.read_labels(None, None) is None
    with pytest.raises(ValueError, match="--labels is empty"):
        inference.read_labels(" , ", None)


def test_tcclip_exposes_the_api():
    assert tcclip.predict is inference.predict
