"""`tcclip data download` from an empty folder to the official layout, against a local server (no internet).

Fast tests use a handful of videos; the slow end-to-end tests put every video that a dataset's config lists into
fixture archives packaged as the provider packages them, download and lay them out, check them with `tcclip data
verify`, and run `tcclip fit` (or `tcclip test` for K600) on that config with a tiny model.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import dataset_fixtures as fx
import pytest
from local_server import LocalServer

from tcclip.cli.commands import run_command
from tcclip.data import download
from tcclip.data.acquire import Request, get_dataset, ssv2_parts
from tcclip.utils.errors import UserError


def data_main(argv: list[str]) -> int:
    return run_command("data", argv)


HMDB = [("Aussie_brush_hair_u_nm_np1_ba_med_3.avi", 0), ("Aussie_brush_hair_u_nm_np1_fr_goo_1.avi", 0),
        ("Boy_cartwheel_f_cm_np1_le_med_0.avi", 1)]  # fmt: skip


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)


@pytest.fixture
def splits_copy(upstream_mirror: Path, tmp_path: Path, monkeypatch) -> Path:
    """A writable copy of the official split/label files (k400's training list is written into it)."""
    copy = tmp_path / "splits"
    shutil.copytree(upstream_mirror / "labels", copy / "labels")
    shutil.copytree(upstream_mirror / "datasets_splits", copy / "datasets_splits")
    monkeypatch.setenv("TCCLIP_SPLITS_DIR", str(copy))
    return copy


def test_hmdb51_nested_rar_flat_layout_and_rerun(tmp_path: Path) -> None:
    root = tmp_path / "hmdb51"
    with LocalServer(fx.hmdb51(HMDB)) as server:
        dead = "http://127.0.0.1:9/hmdb51_org.rar"
        code = data_main(
            ["download", "hmdb51", "--root", str(root), "--url", dead, "--url", server.url("/hmdb51_org.rar")]
        )
        assert code == 0
        assert sorted(p.name for p in root.glob("*.avi")) == sorted(name for name, _ in HMDB)
        assert (root / HMDB[0][0]).read_bytes() == fx.tiny_video("avi")
        requests = len(server.served.requests)
        assert (
            get_dataset(Request("hmdb51", root, urls=(server.url("/hmdb51_org.rar"),)))
            .lines[0]
            .startswith("hmdb51: 3 videos")
        )
        assert len(server.served.requests) == requests  # every step done: nothing fetched or extracted again


def test_killed_extraction_of_one_class_resumes(tmp_path: Path, monkeypatch) -> None:
    from tcclip.data import acquire

    root = tmp_path / "hmdb51"
    real_extract = acquire.extract
    calls = {"n": 0}

    def dies_on_second_class(archive, dest, place=None, progress=None):
        calls["n"] += 1
        if calls["n"] == 3:  # outer RAR, first class, then the second class is killed halfway
            raise KeyboardInterrupt
        return real_extract(archive, dest, place=place, progress=progress)

    with LocalServer(fx.hmdb51(HMDB)) as server:
        request = Request("hmdb51", root, urls=(server.url("/hmdb51_org.rar"),))
        monkeypatch.setattr(acquire, "extract", dies_on_second_class)
        with pytest.raises(KeyboardInterrupt):
            get_dataset(request)
        assert sorted(p.name for p in root.glob("*.avi")) == sorted(n for n, label in HMDB if label == 0)
        monkeypatch.setattr(acquire, "extract", real_extract)
        get_dataset(request)
    assert len(list(root.glob("*.avi"))) == 3 and not list(root.glob(".tcclip-extract-*"))


def test_ucf101_flattens_class_folders(tmp_path: Path) -> None:
    videos = [("v_ApplyEyeMakeup_g01_c01.avi", 0), ("v_YoYo_g25_c05.avi", 100)]
    with LocalServer(fx.ucf101(videos)) as server:
        outcome = get_dataset(
            Request("ucf101", tmp_path / "ucf", urls=(server.url("/UCF101.rar"),), delete_archives=True)
        )
    assert sorted(p.name for p in (tmp_path / "ucf").glob("*.avi")) == [v for v, _ in videos]
    assert not (tmp_path / "ucf" / "archives" / "UCF101.rar").exists()  # --delete-archives
    assert outcome.lines[-1].startswith("next: tcclip data verify --config configs/few_shot_ucf_k8.yaml")


def test_url_is_refused_for_datasets_of_many_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--mirror"):
        get_dataset(Request("k400", tmp_path, urls=("http://x/y.tar.gz",)))


def test_ssv2_needs_its_parts(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--from"):
        get_dataset(Request("ssv2", tmp_path / "ssv2"))
    parts = fx.ssv2_parts(tmp_path / "parts", ["1.webm", "2.webm"], parts=4)
    (parts / "20bn-something-something-v2-02").unlink()
    with pytest.raises(UserError, match="parts 02 are missing"):
        ssv2_parts(parts)


def test_ssv2_from_raw_and_zipped_parts(tmp_path: Path) -> None:
    names = [f"{i}.webm" for i in range(1, 8)]
    parts = fx.ssv2_parts(tmp_path / "parts", names, parts=5, zipped=(1, 3))
    before = sorted(p.name for p in parts.iterdir())
    get_dataset(Request("ssv2", tmp_path / "ssv2", source_dir=parts, delete_archives=True))
    assert sorted(p.name for p in (tmp_path / "ssv2").glob("*.webm")) == sorted(names)
    assert sorted(p.name for p in parts.iterdir()) == before  # the user's own files are never deleted


def _k400_fixture(labels: list[str], val: list[tuple[str, int]]):
    """Train: one annotated video per class; the first is corrupt in its tarball (CVDF's replacement fixes it), the
    second is annotated but absent from the copy."""
    rows, train_files = [], {}
    for i, name in enumerate(labels):
        youtube_id = f"{i:011d}"
        rows.append({"label": name, "youtube_id": youtube_id, "time_start": i, "time_end": i + 10,
                     "split": "train", "is_cc": 0})  # fmt: skip
        file = f"{youtube_id}_{i:06d}_{i + 10:06d}.mp4"
        if i != 1:
            train_files[f"abseiling/{file}" if i % 2 else file] = b"corrupt" if i == 0 else fx.tiny_video("mp4")
    buffer = __import__("io").StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    first = f"{0:011d}_{0:06d}_{10:06d}.mp4"
    val_files = {name.split("/", 1)[1]: fx.tiny_video("mp4") for name, _ in val}
    served = fx.kinetics(
        "400",
        {"train": [{f"part_{k}.tar.gz": part} for k, part in enumerate(_split_dict(train_files, 3))],
         "val": [{f"part_{k}.tar.gz": part} for k, part in enumerate(_split_dict(val_files, 2))]},
        extra={"/kinetics/400/annotations/train.csv": buffer.getvalue().encode(),
               "/kinetics/400/replacement_for_corrupted_k400.tgz": fx.tar_gz(
                   {f"replacement_for_corrupted_k400/{first}": fx.tiny_video("mp4")})},
    )  # fmt: skip
    return served, rows


def _split_dict(files: dict[str, bytes], n: int) -> list[dict[str, bytes]]:
    items = list(files.items())
    return [dict(chunk) for chunk in fx.chunks(items, n)]


def test_k400_layout_replacement_and_training_list(tmp_path: Path, splits_copy: Path) -> None:
    from tcclip.data.labels import read_class_names

    labels = read_class_names(splits_copy / "labels" / "kinetics_400_labels.csv")
    val = [(f"val/v{i:010d}_000000_000010.mp4", i) for i in range(5)]
    served, rows = _k400_fixture(labels, val)
    root = tmp_path / "k400"
    with LocalServer(served) as server:
        code = data_main(["download", "k400", "--root", str(root), "--mirror", server.base])
    assert code == 0
    assert len(list((root / "train").iterdir())) == 399 and len(list((root / "val").iterdir())) == 5
    first = root / "train" / f"{0:011d}_{0:06d}_{10:06d}.mp4"
    assert first.read_bytes() == fx.tiny_video("mp4")  # CVDF's replacement in place of the corrupt file
    assert (root / "archives" / "k400_replaced_originals" / first.name).read_bytes() == b"corrupt"
    # The training list, written independently here from the CSV rows: class ids from the label file.
    expected = [f"train/{r['youtube_id']}_{r['time_start']:06d}_{r['time_end']:06d}.mp4 {labels.index(r['label'])}"
                for r in rows]  # fmt: skip
    written = (splits_copy / "datasets_splits" / "k400_splits" / "train.txt").read_text().splitlines()
    assert written == [line for i, line in enumerate(expected) if i != 1]
    missing = (splits_copy / "datasets_splits" / "k400_splits" / "train_missing.txt").read_text().splitlines()
    assert missing == [expected[1]]


def test_k600_fetches_only_the_new_classes_where_tarballs_are_per_class(tmp_path: Path, splits_copy: Path) -> None:
    from tcclip.data.labels import read_class_names

    new = read_class_names(splits_copy / "labels" / "ZS_split1_K600.csv")[:2]
    served = fx.kinetics(
        "600",
        {"train": [{f"{new[0]}.tar.gz": {f"{new[0]}/a_000000_000010.mp4": fx.tiny_video("mp4")}},
                   {"abseiling.tar.gz": {"abseiling/b_000000_000010.mp4": fx.tiny_video("mp4")}},
                   {f"{new[1]}.tar.gz": {"c_000001_000011.mp4": fx.tiny_video("mp4")}}]},
    )  # fmt: skip
    with LocalServer(served) as server:
        outcome = get_dataset(Request("k600", tmp_path / "k600", mirror=server.base, splits=("train",)))
        fetched = {path for path, _ in server.served.requests}
    assert sorted(p.name for p in (tmp_path / "k600" / "train").iterdir()) == ["a_000000_000010.mp4",
                                                                             "c_000001_000011.mp4"]  # fmt: skip
    assert "/kinetics/600/train/abseiling.tar.gz" not in fetched  # a K400 class: not needed for zero-shot
    assert any("220 K600 classes not in K400" in line for line in outcome.lines)


# -- end to end: every listed video, the real config, a tiny model --------------------------------------------------

TINY = [
    "--model.model_config.arch=test-tiny",
    "--model.model_config.context_token_k=8",
    "--model.model_config.tome_r=4",
    "--model.model_config.prompt_generation_layer_level=[2]",
    "--model.clip_weights=null",
    "--data.init_args.batch_size=2",
    "--data.init_args.num_frames=4",
    "--data.init_args.num_workers=0",
    "--data.init_args.num_clip=1",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=1",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
]


def _lists(splits: Path, config: str) -> list[tuple[str, int]]:
    from tcclip.cli.data_config import datamodule_from_config

    dm = datamodule_from_config([Path("configs") / config], "--data.init_args.root=/")
    rows = {}
    for _, path in dm.annotation_files():
        rows.update(fx.read_list(path))
    return list(rows.items())


def _run(command: str, config: str, root: Path, run_dir: Path) -> str:
    """`tcclip fit|test` in a process of its own, as a user runs it; its stderr."""
    args = [command, "--config", str(Path("configs") / config), f"--data.init_args.root={root}",
            f"--trainer.default_root_dir={run_dir}", *TINY]  # fmt: skip
    if command == "fit":  # the recipe's batch; an evaluation config has no model.optim to complete
        args.append("--model.optim.total_batch_size=2")
    code = "import sys; from tcclip.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


E2E = {
    "hmdb51": ("few_shot_hmdb_k2.yaml", "fit"),
    "ucf101": ("few_shot_ucf_k2.yaml", "fit"),
    "k400": ("zero_shot_k400.yaml", "fit"),
    "k600": ("zero_shot_eval_k600.yaml", "test"),
    "ssv2": ("few_shot_ssv2_k2.yaml", "fit"),
}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(E2E))
def test_end_to_end(dataset: str, tmp_path: Path, splits_copy: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    config, command = E2E[dataset]
    root = tmp_path / dataset
    args = ["download", dataset, "--root", str(root)]
    served: dict[str, bytes] = {}
    if dataset == "hmdb51":
        served = fx.hmdb51(_lists(splits_copy, config))
        args += ["--url", "{base}/hmdb51_org.rar"]
    elif dataset == "ucf101":
        served = fx.ucf101(_lists(splits_copy, config))
        args += ["--url", "{base}/UCF101.rar"]
    elif dataset == "k400":
        from tcclip.data.labels import read_class_names

        labels = read_class_names(splits_copy / "labels" / "kinetics_400_labels.csv")
        val = fx.read_list(splits_copy / "datasets_splits" / "k400_splits" / "val.txt")
        served, _ = _k400_fixture(labels, val)
        args += ["--mirror", "{base}"]
    elif dataset == "k600":
        by_split: dict[str, dict[str, bytes]] = {}
        for name, _ in _lists(splits_copy, config):
            split, file = name.split("/", 1)
            by_split.setdefault(split, {})[file] = fx.tiny_video("mp4")
        served = fx.kinetics("600", {s: [{f"part_{k}.tar.gz": part} for k, part in enumerate(_split_dict(files, 3))]
                                     for s, files in by_split.items()})  # fmt: skip
        args += ["--mirror", "{base}"]
    else:
        parts = fx.ssv2_parts(tmp_path / "parts", [n for n, _ in _lists(splits_copy, config)], zipped=(0, 7))
        args += ["--from", str(parts)]
    with LocalServer(served) as server:
        assert data_main([a.format(base=server.base) for a in args]) == 0
    capsys.readouterr()
    assert data_main(["verify", "--config", f"configs/{config}", "--root", str(root), "--presence-only"]) == 0
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())  # rich wraps lines at the terminal's width
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith(f"{dataset} (") and "present" in summary
    if dataset == "k400":  # the copy against CVDF's known gaps; the training list's left-out video
        assert "a complete CVDF copy has 19,881 of 19,906 annotated val videos" in err
        assert "the list leaves out 1 annotated videos absent from this copy" in err
    if dataset == "k600":
        assert "220 K600 classes not in K400" in err
    for part in summary.split(": ", 1)[1].split("; "):
        counts = part.split(": ")[1].split(" present")[0]
        listed_present = counts.split("/")
        assert listed_present[0] == listed_present[1], summary
    err = _run(command, config, root, tmp_path / "run")
    assert f"data: {dataset} (" in err  # the start-of-run summary


@pytest.mark.slow
def test_verify_fixture_copy_then_damage_it(tmp_path: Path, splits_copy: Path, capsys, monkeypatch) -> None:
    """The HMDB-51 fixture laid out by `data download`, decoded in full by `data verify`, then with a missing, a
    corrupt and an extra file."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = "configs/few_shot_hmdb_k2.yaml"
    videos = _lists(splits_copy, Path(config).name)
    root = tmp_path / "hmdb51"
    with LocalServer(fx.hmdb51(videos)) as server:
        assert data_main(["download", "hmdb51", "--root", str(root), "--url", server.url("/hmdb51_org.rar")]) == 0
    train = fx.read_list(splits_copy / "datasets_splits" / "hmdb_splits" / "train1_few_shot_2.txt")
    test = fx.read_list(splits_copy / "datasets_splits" / "hmdb_splits" / "val1.txt")
    capsys.readouterr()
    assert data_main(["verify", "--config", config, "--root", str(root), "--workers", "2"]) == 0
    n, m = len(train), len(test)
    expected = f"train: {n}/{n} present, {n} decodable, {n} exact; val/split1: {m:,}/{m:,} present, {m:,} decodable"
    assert expected in capsys.readouterr().out
    (root / train[0][0]).unlink()
    (root / test[0][0]).write_bytes(b"RIFF" + bytes(100))
    (root / "stray.avi").write_bytes(fx.tiny_video("avi"))
    assert data_main(["verify", "--config", config, "--root", str(root), "--workers", "2"]) == 1
    captured = capsys.readouterr()
    summary = captured.out.strip().splitlines()[-1]
    assert f"train: {n - 1}/{n} present, {n - 1} decodable, {n - 1} exact" in summary
    assert f"val/split1: {m:,}/{m:,} present, {m - 1:,} decodable, {m - 1:,} exact" in summary
    assert "1 video files under the root are in no list" in " ".join(captured.err.split())


def test_kinetics_need_the_official_labels_before_any_download(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TCCLIP_SPLITS_DIR", str(tmp_path / "no_splits"))
    with LocalServer({}) as server:
        for dataset in ("k400", "k600"):
            with pytest.raises(UserError, match="tcclip splits download"):
                get_dataset(Request(dataset, tmp_path / dataset, mirror=server.base))
        assert server.served.requests == []
