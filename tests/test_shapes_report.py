"""The shapes generator's ground truth and the report that scores captions against it."""

import json
import os

import pytest

from tfrecords_tools import flickr8k
from tfrecords_tools import shapes
from tfrecords_tools import shapes_report

SCENES = shapes.SHAPES_SCENES.to_dict()


def _truth(images: dict) -> dict:
    return {"scenes": SCENES, "images": {k: {"split": "test", "objects": [tuple(o) for o in v]}
                                         for k, v in images.items()}}


def test_parse_objects_groups_attribute_words_in_order():
    parse = shapes_report.parse_objects
    assert parse("two shapes : a large red circle and a small blue square", SCENES) == [
        {"size": "large", "colour": "red", "shape": "circle"},
        {"size": "small", "colour": "blue", "shape": "square"}]
    assert parse("a red circle , a green cross and an orange diamond", SCENES) == [
        {"colour": "red", "shape": "circle"}, {"colour": "green", "shape": "cross"},
        {"colour": "orange", "shape": "diamond"}]
    # A missing attribute does not merge two objects.
    assert parse("a red and a blue square", SCENES) == [{"colour": "red"}, {"colour": "blue", "shape": "square"}]
    assert parse("a large large circle", SCENES) == [{"size": "large"}, {"size": "large", "shape": "circle"}]
    assert parse("there is nothing", SCENES) == []
    night = shapes.NIGHT_SCENES.to_dict()
    assert night["attribute_order"] == ["size", "shape", "colour"]
    assert parse("we can see a big star in pink and a ring in white here", night) == [
        {"size": "big", "shape": "star", "colour": "pink"}, {"shape": "ring", "colour": "white"}]


def test_score_counts_exactly():
    truth = _truth({
        "a.jpg": [("large", "red", "circle")],
        "b.jpg": [("small", "yellow", "square")],
        "c.jpg": [("large", "green", "cross"), ("small", "blue", "circle")],  # blue circle: held out
        "d.jpg": [("small", "red", "square"), ("large", "purple", "diamond"), ("small", "orange", "cross")],
        "e.jpg": [("small", "red", "triangle")],  # held out
        "f.jpg": [("large", "red", "circle")],  # a's objects again
    })
    captions = {
        "a.jpg": "a large red circle",
        "b.jpg": "a small orange square",  # colour wrong
        "c.jpg": "a green cross and a blue circle",  # right, without sizes
        "d.jpg": "a small red square and a large purple diamond",  # the third object is missing
        "e.jpg": "a small red circle",  # shape wrong
        "f.jpg": "a large red circle",
        "elsewhere.jpg": "a large red circle",  # not in the ground truth
    }
    report = shapes_report.score(captions, truth)
    assert report.images == 6 and report.missing == 1
    assert report.seen == {1: [2, 3], 3: [0, 1]}
    assert report.held_out == {2: [1, 1], 1: [0, 1]}
    assert report.all_right() == [3, 6]
    assert report.attribute["colour"] == [7, 9]
    assert report.attribute["shape"] == [7, 9]
    assert report.attribute["size"] == [6, 7]  # c names no sizes: its 2 objects are not counted
    assert report.confusions["colour"] == {("yellow", "orange"): 1, ("orange", "-"): 1}
    assert report.confusions["shape"] == {("triangle", "circle"): 1, ("cross", "-"): 1}
    assert report.confusions["size"] == {("small", "-"): 1}
    assert report.held_out_objects == [1, 2]
    assert (report.distinct_captions, report.distinct_object_sets) == (5, 5)
    summary = report.summary()
    assert summary["single_seen_right"] == pytest.approx(2 / 3)
    assert summary["all_right"] == pytest.approx(0.5)
    assert summary["held_out_named_right"] == pytest.approx(0.5)
    assert summary["colour_accuracy"] == pytest.approx(7 / 9)
    assert summary["distinct_ratio"] == pytest.approx(1.0)
    text = shapes_report.format_report(report)
    assert "yellow->orange 1" in text and "held-out pairs named right: 1/2 (50.0%)" in text
    assert "  1 object      2/3     66.7% |    0/1      0.0%" in text


def test_score_collapsed_captions():
    truth = _truth({f"{i}.jpg": [("large", c, "circle")] for i, c in enumerate(["red", "green", "purple"])})
    report = shapes_report.score({f"{i}.jpg": "a large red circle" for i in range(3)}, truth)
    assert (report.distinct_captions, report.distinct_object_sets) == (1, 3)
    assert report.summary()["distinct_ratio"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("scenes", [shapes.SHAPES_SCENES, shapes.NIGHT_SCENES], ids=["shapes", "night"])
def test_ground_truth_matches_captions_and_scores_references_right(tmp_path, scenes):
    dirs = shapes.generate_shapes(tmp_path / "raw", seed=2, num_train=40, num_val=3, num_test=30,
                                  image_size=48, scenes=scenes)
    assert dirs.objects_file == str(tmp_path / "raw" / shapes.OBJECTS_FILE)
    truth = shapes.load_objects(dirs.objects_file)
    assert truth["scenes"] == json.loads(json.dumps(scenes.to_dict()))
    references: dict[str, list[str]] = {}
    with open(tmp_path / "raw" / flickr8k.TOKEN_FILE, encoding="utf-8") as f:
        for line in f:
            key, caption = line.rstrip("\n").split("\t")
            references.setdefault(key.split("#")[0], []).append(caption)
    assert sorted(truth["images"]) == sorted(references) == sorted(os.listdir(dirs.images_dir))
    held_out = set(scenes.held_out_pairs)
    for name, entry in truth["images"].items():
        assert entry["split"] == name.split("_")[1]
        assert 1 <= len(entry["objects"]) <= 3
        assert shapes.captions_for(entry["objects"], scenes) == references[name]
        if entry["split"] == "train":
            assert not any((c, s) in held_out for _, c, s in entry["objects"])
    # Every template's reference parses back to the truth: the report scores it all right.
    for template in range(len(scenes.templates)):
        report = shapes_report.score({n: refs[template] for n, refs in references.items()}, truth)
        assert report.all_right() == [73, 73], scenes.templates[template]
        assert report.summary()["colour_accuracy"] == 1.0


def test_report_cli_reads_a_run_dirs_newest_evaluation(tmp_path, capsys):
    truth_path = tmp_path / "objects.json"
    truth_path.write_text(json.dumps(_truth({"a.jpg": [("large", "red", "circle")],
                                             "b.jpg": [("small", "green", "cross")]})))
    details = tmp_path / "run" / "eval" / "test-ckpt-3.json"
    details.parent.mkdir(parents=True)
    details.write_text(json.dumps({"captions": {
        "a.jpg": {"generated": "a large red circle", "references": []},
        "b.jpg": {"generated": "a small purple cross", "references": []}}}))
    assert shapes_report.main([str(tmp_path / "run"), "--objects", str(truth_path)]) == 0
    out = capsys.readouterr().out
    assert f"captions: {details}" in out and "green->purple 1" in out
    assert shapes_report.main([str(details), "--objects", str(truth_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["single_seen_right"] == 0.5
    assert shapes_report.main([str(tmp_path), "--objects", str(truth_path)]) == 2
    assert "run `python -m caption_app evaluate" in capsys.readouterr().err
