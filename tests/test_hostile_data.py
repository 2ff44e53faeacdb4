"""Hostile archives and careless operators: the converters never hang, never
read outside the image folder, never delete what they did not write, and skip
malformed annotations with a count instead of a traceback.

Tests that could hang or allocate without bound if the converter regressed
(a FIFO, /dev/zero) run it in a subprocess with a timeout and a memory limit.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caption_app.data import manifest as manifest_lib
from tests.conftest import REPO_ROOT, cli_command, cli_env, read_records
from tfrecords_tools import coco, flickr8k, jsonl_csv, layout, merge, source_api
from tfrecords_tools.source_api import ConversionError

TIMEOUT_S = 240  # a conversion of a few tiny images takes seconds; a hang never ends
MEMORY_LIMIT = 6 << 30  # address space of a converter subprocess (TensorFlow needs ~3 GB of it)

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(os, "symlink"),
                                reason="needs POSIX FIFOs and symlinks")


def _jpeg(path: Path, seed: int = 0) -> None:
    pixels = np.full((16, 16, 3), 30 * seed % 256, np.uint8)
    Image.fromarray(pixels).save(path, "JPEG")


def _jsonl_dataset(tmp_path: Path, names: list[str], extra_records: list[dict] = ()) -> Path:
    """tmp_path/data.jsonl naming `names` (train images 0..n-1 written as JPEGs when not present)."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    lines = []
    for i, name in enumerate(names):
        if not os.path.lexists(images / name):
            _jpeg(images / name, i)
        lines.append({"image": f"images/{name}", "caption": f"a picture number {i}", "split": "train"})
    lines.extend(extra_records)
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run_converter(*args: str) -> subprocess.CompletedProcess:
    """`python -m tfrecords_tools args...`, killed after TIMEOUT_S (a hang fails the test) and
    limited to MEMORY_LIMIT (reading a device without bound fails it too, instead of the machine)."""
    return subprocess.run(cli_command("tfrecords_tools", *args, "--no-progress"), cwd=REPO_ROOT,
                          env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
                          preexec_fn=_limit_memory)


def _convert_jsonl(path: Path, out: Path, **kwargs) -> dict:
    return jsonl_csv.convert_records(path, "jsonl", out, min_word_count=1, progress=False, verbose=False,
                                     **kwargs)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- only regular files are read -------------------------------------------------------------------

def test_fifo_named_like_an_image_is_skipped_not_waited_for(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    os.mkfifo(images / "x.jpg")  # nobody ever writes into it: opening it for reading would block
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg", "x.jpg"])
    out = tmp_path / "out"
    result = _run_converter("jsonl", "--file", str(data), "--out", str(out), "--min-word-count", "1")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"]["not_regular_file"] == {"count": 1, "examples": ["images/x.jpg"]}
    assert manifest["splits"]["train"]["num_images"] == 2


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error: ...` line of a failed CLI run (TensorFlow's start-up logs aside)."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_fifo_as_the_annotation_file_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "captions_train2014.json"
    os.mkfifo(fifo)
    (tmp_path / "train2014").mkdir()
    result = _run_converter("coco", "--annotations", str(fifo), "--images", str(tmp_path / "train2014"),
                            "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "not a regular file" in _error_line(result)


def test_symlink_to_dev_zero_is_skipped_with_a_bounded_read(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    images = tmp_path / "images"
    images.mkdir()
    os.symlink("/dev/zero", images / "zero.jpg")
    data = _jsonl_dataset(tmp_path, ["a.jpg", "zero.jpg"])
    # Trusting symlinks still reads only regular files: the device is never read.
    out = tmp_path / "out"
    result = _run_converter("jsonl", "--file", str(data), "--out", str(out), "--min-word-count", "1",
                            "--follow-symlinks")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"]["not_regular_file"]["examples"] == ["images/zero.jpg"]
    assert manifest["splits"]["train"]["num_images"] == 1


def test_reading_a_device_stops_before_the_read(tmp_path):
    """The image check itself (no TensorFlow: a 1 GiB memory limit is plenty) on a symlink to
    /dev/zero, trusted and without a root: a device is never read."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    code = ("import sys; from tfrecords_tools import images, source_api; "
            "print(images.check_image(source_api.Item('z', sys.argv[1], ('a',)), 10**6)[0])")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "zero.jpg")], cwd=REPO_ROOT,
                            env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT_S, preexec_fn=limit)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["not_regular_file"]


def test_image_file_over_the_size_cap_is_skipped_before_reading(tmp_path):
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg"])
    big = tmp_path / "images" / "big.jpg"
    with open(big, "wb") as f:  # sparse: 1 GiB claimed, no disk used
        f.truncate(1 << 30)
    data.write_text(data.read_text() + json.dumps({"image": "images/big.jpg", "caption": "a big one",
                                                   "split": "train"}) + "\n")
    manifest = _convert_jsonl(data, tmp_path / "out", max_file_bytes=1 << 20)
    assert manifest["skipped"]["file_too_large"]["examples"] == ["images/big.jpg"]
    assert manifest["splits"]["train"]["num_images"] == 2


# --- symlinks out of the image root -------------------------------------------------------------------

def test_symlinks_leading_outside_the_image_root_are_unsafe_paths(tmp_path):
    outside = tmp_path / "outside"  # next to the dataset, outside its root (the JSONL file's folder)
    outside.mkdir()
    _jpeg(outside / "secret.jpg", 7)
    dataset = tmp_path / "dataset"
    images = dataset / "images"
    images.mkdir(parents=True)
    os.symlink(outside / "secret.jpg", images / "evil.jpg")  # a file symlink
    os.symlink(outside, images / "sub")  # a folder symlink
    os.symlink("a.jpg", images / "alias.jpg")  # inside the root: fine
    data = _jsonl_dataset(dataset, ["a.jpg", "evil.jpg", "sub/secret.jpg", "alias.jpg"])
    manifest = _convert_jsonl(data, tmp_path / "out")
    assert manifest["skipped"]["unsafe_path"] == {"count": 2,
                                                  "examples": ["images/evil.jpg", "images/sub/secret.jpg"]}
    stored = {r["image_id"] for r in read_records(tmp_path / "out", "train")}
    assert stored == {"images/a.jpg", "images/alias.jpg"}

    trusted = _convert_jsonl(data, tmp_path / "trusted", follow_symlinks=True)
    assert "unsafe_path" not in trusted["skipped"] and trusted["splits"]["train"]["num_images"] == 4


# --- merge reads only shards inside each part dir ---------------------------------------------------

def _converted_part(tmp_path: Path) -> tuple[Path, Path]:
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    out = tmp_path / "out"
    _convert_jsonl(data, out, part=(0, 1))
    folder = Path(layout.part_dir(out, 0, 1))
    assert (folder / layout.PART_FILE).exists()
    return out, folder


@pytest.mark.parametrize("hostile", ["../../../secret.txt", "symlink", "train-00000-of-00001.tfrecord/.."])
def test_merge_takes_only_shard_files_inside_the_part_dir(tmp_path, hostile):
    secret = tmp_path / "secret.txt"
    secret.write_text("the operator's private key")
    out, folder = _converted_part(tmp_path)
    info = json.loads((folder / layout.PART_FILE).read_text())
    if hostile == "symlink":  # a shard name, but a symlink to a file outside
        shard = folder / info["splits"]["train"]["files"][0]
        shard.unlink()
        os.symlink(secret, shard)
    else:
        info["splits"]["train"]["files"] = [hostile]
        (folder / layout.PART_FILE).write_text(json.dumps(info))
    with pytest.raises(ConversionError, match="part.json lists") as error:
        merge.merge_parts(out, verbose=False)
    assert "\n" not in str(error.value)
    assert not (out / manifest_lib.MANIFEST).exists()
    linked = [p for p in out.iterdir() if p.is_file() and os.path.samefile(p, secret)]
    assert not linked and secret.read_text() == "the operator's private key"
    assert (folder / layout.PART_FILE).exists()  # the parts are kept for another try


def test_malformed_part_json_is_a_clear_error(tmp_path):
    out, folder = _converted_part(tmp_path)
    info = json.loads((folder / layout.PART_FILE).read_text())
    info["splits"]["train"] = {"files": {"a": 1}}  # a dict, no counts
    (folder / layout.PART_FILE).write_text(json.dumps(info))
    with pytest.raises(ConversionError, match="not a part.json the converter wrote"):
        merge.merge_parts(out, verbose=False)


# --- never delete what it did not write ---------------------------------------------------------------

def test_out_that_is_not_a_conversion_is_refused_naming_what_is_there(tmp_path):
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg"])
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "train-00000-of-00001.tfrecord").write_text("someone else's shard? it looks like ours")
    before = _tree(out)
    result = _run_converter("jsonl", "--file", str(data), "--out", str(out), "--min-word-count", "1")
    assert result.returncode == 2
    error = _error_line(result)
    assert "thesis.tex" in error and "not a data dir" in error
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)


def test_failed_reconversion_leaves_the_old_data_dir_intact(tmp_path):
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    out = tmp_path / "out"
    _convert_jsonl(data, out, images_per_shard=1)
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    wrong = tmp_path / "wrong_images"
    wrong.mkdir()
    with pytest.raises(ConversionError, match="no usable train image"):
        _convert_jsonl(data, out, root=wrong, images_per_shard=1)  # every image missing there
    assert _tree(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no staging dir left behind
    assert manifest_lib.load(str(out)).split("train").num_images == 3

    # A successful re-conversion replaces our files only.
    _convert_jsonl(data, out, images_per_shard=2)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.glob("train-*")) == ["train-00000-of-00002.tfrecord",
                                                            "train-00001-of-00002.tfrecord"]


def test_failed_part_reconversion_leaves_the_old_part_and_foreign_files(tmp_path, monkeypatch):
    from caption_app.data import records

    out, folder = _converted_part(tmp_path)
    before = _tree(folder)
    real = records.make_example

    def failing(image_id, *args):
        if image_id.endswith("c.jpg"):
            raise OSError("disk full")
        return real(image_id, *args)

    monkeypatch.setattr(records, "make_example", failing)
    with pytest.raises(OSError, match="disk full"):
        _convert_jsonl(tmp_path / "data.jsonl", out, part=(0, 1))
    monkeypatch.setattr(records, "make_example", real)
    assert _tree(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no staging dir left

    (folder / "README").write_text("mine")
    with pytest.raises(ConversionError, match="README"):
        _convert_jsonl(tmp_path / "data.jsonl", out, part=(0, 1))
    assert (folder / "README").read_text() == "mine"


def test_merge_keeps_files_it_did_not_write_in_parts(tmp_path):
    out, folder = _converted_part(tmp_path)
    (out / layout.PARTS_DIR / "how-we-split.txt").write_text("mine")
    merge.merge_parts(out, verbose=False)
    assert manifest_lib.load(str(out)).split("train").num_images == 3
    assert (out / layout.PARTS_DIR / "how-we-split.txt").read_text() == "mine"
    assert not folder.exists()  # the part itself was ours: merged and deleted


def _main(capsys, *args: str) -> tuple[int, str]:
    """`python -m tfrecords_tools args...` in this process: (exit code, its one stderr line)."""
    from tfrecords_tools.__main__ import main

    capsys.readouterr()
    code = main([*args, "--no-progress"] if args[0] not in ("merge", "inspect") else list(args))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return code, lines[0]


@pytest.mark.parametrize("manifest", [None, {"name": "my project", "splits": {}}, "not json {"])
def test_files_named_like_outputs_beside_no_manifest_of_ours_are_refused_not_replaced(tmp_path, capsys, manifest):
    """Ownership is decided by content: a user's vocab.txt and shard-named file, with no manifest the
    converter wrote (none, another program's, or a broken one), are refused with one line."""
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg"])
    out = tmp_path / "mine"
    out.mkdir()
    (out / "vocab.txt").write_text("my own vocabulary\n")
    (out / "train-00000-of-00001.tfrecord").write_bytes(b"my own records")
    if manifest is not None:
        (out / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    before = _tree(out)
    code, line = _main(capsys, "jsonl", "--file", str(data), "--out", str(out), "--min-word-count", "1")
    assert code == 2 and line.startswith(f"error: --out {out} is not empty and not a data dir")
    assert "vocab.txt" in line and "train-00000-of-00001.tfrecord" in line and "no manifest.json" in line
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)  # no lock file left


def test_a_manifest_listing_a_path_outside_is_not_ours(tmp_path, capsys):
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg"])
    out = tmp_path / "out"
    _convert_jsonl(data, out)
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["files"] = ["../secret.txt"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert layout.our_manifest(str(out)) is None and layout.previous_outputs(str(out)) == frozenset()
    code, line = _main(capsys, "jsonl", "--file", str(data), "--out", str(out), "--min-word-count", "1")
    assert code == 2 and "manifest.json" in line
    assert secret.read_text() == "keep me"


def test_reconversion_replaces_only_what_its_manifest_lists(tmp_path):
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    out = tmp_path / "out"
    _convert_jsonl(data, out, images_per_shard=3)  # train-00000-of-00001
    (out / "val-00003-of-00004.tfrecord").write_bytes(b"a user's file, named like a shard")
    _convert_jsonl(data, out, images_per_shard=3)
    assert (out / "val-00003-of-00004.tfrecord").read_bytes() == b"a user's file, named like a shard"

    # A new shard whose name a user's file holds: refused before anything is deleted.
    (out / "train-00001-of-00002.tfrecord").write_bytes(b"mine too")
    before = _tree(out)
    with pytest.raises(ConversionError, match=r"holds train-00001-of-00002\.tfrecord, which the converter did not"):
        _convert_jsonl(data, out, images_per_shard=2)
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)
    assert manifest_lib.load(str(out)).split("train").files == ("train-00000-of-00001.tfrecord",)


def test_a_conversion_stopped_while_moving_its_output_in_is_replaced(tmp_path):
    """Killed inside swap_in: the old manifest gone, some new files moved in, its staging dir
    (holding the rest) still there. That staging dir is what makes the output-named files ours."""
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg"])
    out = tmp_path / "out"
    _convert_jsonl(data, out)
    stage = out / f"{layout.STAGING_PREFIX}data-killed"
    stage.mkdir()
    (out / "manifest.json").rename(stage / "manifest.json")
    (out / "train-00000-of-00001.tfrecord").rename(stage / "train-00000-of-00001.tfrecord")
    assert layout.our_manifest(str(out)) is None
    assert layout.check_out_dir(out) == {"vocab.txt"}
    _convert_jsonl(data, out)
    assert manifest_lib.load(str(out)).split("train").num_images == 2
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train-00000-of-00001.tfrecord", "vocab.txt"]


# --- one conversion per --out -------------------------------------------------------------------------

def _hold(lock: Path, command: str = "tfrecords_tools jsonl") -> subprocess.Popen:
    """Another process holding `lock`. The lock's protocol, spelt out: flock on OUT/.convert.lock
    (a part's: OUT/.convert-part-IIIII-of-NNNNN.lock), the holder described in it as JSON."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, json, os, socket, time; "
         f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
         "os.write(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), "
         f"'started': '2026-11-29T20:41:07+00:00', 'command': {command!r}}}).encode()); "
         "print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _tfds_args(tmp_path: Path) -> list[str]:
    pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed")
    return ["tfds", "--name", "coco_captions", "--data-dir", str(tmp_path / "empty_tfds")]


@pytest.mark.parametrize("how", ["threaded", "beam", "shapes", "merge", "part", "tfds"])
def test_a_second_conversion_into_a_busy_out_is_refused_touching_nothing(tmp_path, capsys, how):
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg"])
    out = tmp_path / "out"
    out.mkdir()
    live = out / f"{layout.STAGING_PREFIX}data-live"  # the running conversion's work
    live.mkdir()
    (live / "train-00000-of-00001.tfrecord").write_bytes(b"being written")
    jsonl = ["jsonl", "--file", str(data), "--out", str(out), "--min-word-count", "1"]
    args = {"threaded": jsonl,
            "beam": jsonl + ["--runner", "direct", "--direct_running_mode=in_memory"],
            "shapes": ["shapes", "--out", str(out), "--num-train", "2", "--num-val", "0", "--num-test", "0"],
            "merge": ["merge", "--out", str(out)],
            "part": jsonl + ["--num-parts", "2", "--part-index", "1"],
            "tfds": _tfds_args(tmp_path) + ["--out", str(out)] if how == "tfds" else []}[how]
    lock = out / (".convert-part-00001-of-00002.lock" if how == "part" else ".convert.lock")
    holder = _hold(lock)
    try:
        before, names = _tree(out), sorted(p.name for p in out.iterdir())
        code, line = _main(capsys, *args)
        assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == names
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    where = "part 1 of 2 in --out" if how == "part" else "--out"
    assert line.startswith(f"error: {where} {out} is in use by pid {holder.pid} on host ")
    assert "started 2026-11-29T20:41:07+00:00 (tfrecords_tools jsonl)" in line and "another --out" in line


def test_merge_waits_for_no_part_it_would_read(tmp_path, capsys):
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    out = tmp_path / "out"
    for index in range(2):
        _convert_jsonl(data, out, part=(index, 2))
    holder = _hold(out / ".convert-part-00001-of-00002.lock", "tfrecords_tools jsonl part 1 of 2")
    try:
        code, line = _main(capsys, "merge", "--out", str(out))
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and line.startswith(f"error: part 1 of 2 in --out {out} is in use by pid {holder.pid}")
    assert not (out / "manifest.json").exists() and (out / "parts").is_dir()
    # merge's own locks released and removed; the killed holder's file stays until taken over
    assert sorted(p.name for p in out.iterdir()) == [".convert-part-00001-of-00002.lock", "parts"]
    merge.merge_parts(out, verbose=False)
    assert manifest_lib.load(str(out)).split("train").num_images == 3
    assert not list(out.glob(".convert*.lock")) and not (out / "parts").exists()


def test_the_lock_file_goes_with_its_holder_and_a_dead_holders_is_taken_over(tmp_path, capsys):
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg"])
    out = tmp_path / "out"
    _convert_jsonl(data, out)
    assert not (out / ".convert.lock").exists()  # removed on release
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".convert.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid,
                                                   "started": "2026-11-29T20:41:07+00:00",
                                                   "command": "tfrecords_tools jsonl"}))
    capsys.readouterr()
    _convert_jsonl(data, out)  # a killed conversion's lock file (its flock died with it)
    assert f"taking over the lock of {out} left by pid {dead.pid}" in capsys.readouterr().err
    assert not (out / ".convert.lock").exists()


# --- malformed annotations are counted, never a traceback ---------------------------------------------

def test_coco_image_ids_that_are_dicts_or_lists_are_bad_lines(tmp_path):
    images = tmp_path / "train2014"
    images.mkdir()
    for i in range(3):
        _jpeg(images / f"{i}.jpg", i)
    annotations = {
        "images": [{"id": 0, "file_name": "0.jpg"}, {"id": 1, "file_name": "1.jpg"},
                   {"id": [2], "file_name": "2.jpg"}],
        "annotations": [{"image_id": 0, "caption": "a dog"}, {"image_id": 1, "caption": "a cat"},
                        {"image_id": {"id": 0}, "caption": "a trap"}, {"image_id": [1], "caption": "a trap"}],
    }
    path = tmp_path / "captions_train2014.json"
    path.write_text(json.dumps(annotations))
    manifest = coco.convert_coco([path], [images], tmp_path / "out", min_word_count=1, progress=False,
                                 verbose=False)
    assert manifest["skipped"]["bad_line"]["count"] == 3
    assert manifest["splits"]["train"]["num_images"] == 2 and manifest["splits"]["train"]["num_captions"] == 2


def test_coco_image_id_listed_twice_with_another_file_name_is_a_counted_skip(tmp_path, capsys):
    images = tmp_path / "train2014"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _jpeg(images / name)
    annotations = {
        "images": [{"id": 7, "file_name": "a.jpg"}, {"id": 8, "file_name": "c.jpg"},
                   {"id": 7, "file_name": "b.jpg"}],  # id 7 again: whose are its captions?
        "annotations": [{"image_id": 7, "caption": "a dog on grass"}, {"image_id": 8, "caption": "a cat"},
                        {"image_id": 7, "caption": "a dog running"}],
    }
    path = tmp_path / "captions_train2014.json"
    path.write_text(json.dumps(annotations))
    items, skipped = coco.read_annotations(path, [images])
    assert [(i.image_id, i.captions) for i in items] == [("a.jpg", ("a dog on grass", "a dog running")),
                                                          ("c.jpg", ("a cat",))]
    assert skipped == {"duplicate_id": ["captions_train2014.json:id 7 (b.jpg; kept a.jpg)"]}

    manifest = coco.convert_coco([path], [images], tmp_path / "out", min_word_count=1, progress=False)
    assert manifest["skipped"]["duplicate_id"] == {"count": 1,
                                                   "examples": ["captions_train2014.json:id 7 (b.jpg; kept a.jpg)"]}
    assert manifest["splits"]["train"]["num_images"] == 2 and manifest["splits"]["train"]["num_captions"] == 3
    summary = capsys.readouterr().out
    assert "duplicate_id: 1 (COCO image entry reuses an earlier entry's id" in summary and "b.jpg" in summary


def test_coco_file_nested_too_deep_is_a_clear_error(tmp_path):
    images = tmp_path / "train2014"
    images.mkdir()
    path = tmp_path / "captions_train2014.json"
    path.write_text("[" * 100_000)
    with pytest.raises(ConversionError, match="cannot read COCO caption file"):
        coco.read_coco([path], [images])


def test_nul_byte_in_a_jsonl_path_is_an_unsafe_path(tmp_path):
    data = _jsonl_dataset(tmp_path, ["a.jpg", "b.jpg"],
                          [{"image": "images/a\u0000.jpg", "caption": "a trap", "split": "train"}])
    data.write_text(data.read_text() + "[" * 100_000 + "\n")  # a line nested too deep for json
    manifest = _convert_jsonl(data, tmp_path / "out")
    assert manifest["skipped"]["unsafe_path"]["examples"] == ["images/a\u0000.jpg"]
    assert manifest["skipped"]["bad_line"]["count"] == 1
    assert manifest["splits"]["train"]["num_images"] == 2


def test_csv_cell_over_the_field_limit_is_a_bad_line(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _jpeg(images / "a.jpg")
    _jpeg(images / "b.jpg", 1)
    path = tmp_path / "data.csv"
    path.write_text("image,caption,split\nimages/a.jpg,a dog,train\n"
                    f"images/b.jpg,{'x' * 200_000},train\nimages/b.jpg,a cat,train\n")
    manifest = jsonl_csv.convert_records(path, "csv", tmp_path / "out", min_word_count=1, progress=False,
                                         verbose=False)
    assert manifest["skipped"]["bad_line"]["count"] == 1
    assert manifest["splits"]["train"]["num_images"] == 2


def test_nul_byte_in_a_flickr8k_name_is_an_unsafe_path(tmp_path):
    images, text = tmp_path / "images", tmp_path / "text"
    images.mkdir()
    text.mkdir()
    _jpeg(images / "a.jpg")
    (text / flickr8k.TOKEN_FILE).write_text("a.jpg#0\ta dog\nb\0.jpg#0\ta trap\n")
    (text / flickr8k.SPLIT_FILES["train"]).write_text("a.jpg\nb\0.jpg\n")
    (text / flickr8k.SPLIT_FILES["val"]).write_text("")
    (text / flickr8k.SPLIT_FILES["test"]).write_text("")
    manifest = flickr8k.convert_flickr8k(images, text, tmp_path / "out", min_word_count=1, progress=False,
                                         verbose=False)
    assert manifest["skipped"]["unsafe_path"]["examples"] == ["b\0.jpg"]
    assert manifest["splits"]["train"]["num_images"] == 1


# --- caption-count outliers ---------------------------------------------------------------------------

def test_an_image_with_thousands_of_captions_is_capped(tmp_path, capsys):
    outlier = {"image": "images/a.jpg", "captions": [f"caption number {i}" for i in range(3001)],
               "split": "train"}
    data = _jsonl_dataset(tmp_path, ["b.jpg", "c.jpg"], [outlier])
    _jpeg(tmp_path / "images" / "a.jpg")
    out = tmp_path / "out"
    manifest = jsonl_csv.convert_records(data, "jsonl", out, min_word_count=1, progress=False)
    cap = 20  # the default (docs/data.md)
    assert manifest["max_captions_per_image"] == cap  # what training pads batches to
    assert manifest["caption_cap"] == {"limit": cap, "images_capped": 1, "captions_dropped": 3001 - cap,
                                       "examples": ["images/a.jpg"]}
    stored = {r["image_id"]: r["captions"] for r in read_records(out, "train")}
    assert stored["images/a.jpg"] == [f"caption number {i}" for i in range(cap)]  # the first ones
    assert f"Captions capped at {cap} per image: 1 images lost {3001 - cap} captions" in capsys.readouterr().out

    smaller = _convert_jsonl(data, tmp_path / "three", max_captions_per_image=3)
    assert smaller["max_captions_per_image"] == 3 and smaller["caption_cap"]["captions_dropped"] == 2998
    assert source_api.DEFAULT_MAX_CAPTIONS_PER_IMAGE == cap


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom"])
def test_a_vocabulary_or_word_counts_file_that_never_ends_is_one_error_line(tmp_path, special):
    """`--vocab /dev/zero`, a run dir's vocab.txt swapped for a device, word_counts.txt as a FIFO: refused
    before anything is read, instead of reading without end."""
    from caption_app.data.vocabulary import Vocabulary
    from caption_app.runs.im2txt_import import Im2txtImportError, read_word_counts
    from caption_app.io_utils import read_small_file

    with pytest.raises(ValueError, match="not a regular file"):
        Vocabulary.load(special)
    with pytest.raises(Im2txtImportError, match="not a regular file"):
        read_word_counts(special)
    big = tmp_path / "vocab.txt"
    big.write_bytes(b"a 1\n" * 100)
    with pytest.raises(ValueError, match="over the 64"):
        read_small_file(big, "vocabulary file", limit=64)
    assert read_small_file(big, "vocabulary file") == b"a 1\n" * 100
