"""Self-critical training: the CIDEr-D reward against pycocoevalcap and by hand, the document
frequencies' storage, the policy gradient's log-probabilities, and the phase added to a finished
run (resumed from a mid-epoch backup, its start checkpoint kept, evaluated), plus bad settings."""

from __future__ import annotations

import json
import math
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from pycocoevalcap.cider.cider_scorer import CiderScorer

from caption_app.__main__ import main as cli_main
from caption_app.config import Config
from caption_app.data.vocabulary import END_ID, START_ID, TokenizerSettings, Vocabulary
from caption_app.inference.strategies import Sample
from caption_app.runs import loader as run_loader
from caption_app.training import cider_reward, scst
from caption_app.training.cider_reward import DocumentFrequencies
from caption_app.training.train import train
from tests.conftest import set_args

SETTINGS = TokenizerSettings()

# Lower-case, unpunctuated (as the tokenizer leaves them): pycocoevalcap splits on spaces only.
REFERENCES = [
    ["a red circle and a blue square", "a red circle", "the red circle left of a blue square"],
    ["a small green cross", "green cross on white", "a green cross a green cross", "one cross"],
    ["two dogs run on grass", "dogs running", "a dog and another dog run in the grass"],
    ["a cat", "a black cat sleeps on a red sofa in the sun near a window"],
]
CANDIDATES = [  # four per image: exact, repeated n-grams, empty, a single word, words no reference has
    ["a red circle and a blue square", "a red a red", "", "circle"],
    ["a green cross", "a small green cross", "green green green", "a purple hexagon"],
    ["dogs run on the grass", "two dogs", "a dog", "run run run run"],
    ["a black cat sleeps on a sofa", "cat", "a", "a cat a cat a cat a cat a cat"],
]


def _rewards(candidates, references, frequencies, width: int = 16) -> np.ndarray:
    """CIDEr-D [images, K] of `candidates` through the in-graph reward (candidates as vocabulary ids)."""
    words = sorted({w for row in candidates for c in row for w in c.split()})
    vocab = Vocabulary(words)
    ids = np.zeros((len(candidates), len(candidates[0]), width), np.int32)
    lengths = np.zeros(ids.shape[:2], np.int32)
    for b, row in enumerate(candidates):
        for k, caption in enumerate(row):
            tokens = [vocab.word_to_id(w) for w in caption.split()]
            ids[b, k, :len(tokens)], lengths[b, k] = tokens, len(tokens)
            if len(tokens) < width:
                ids[b, k, len(tokens)] = END_ID  # what a sampled caption looks like; not a word
    padded = [row + [""] * (max(map(len, references)) - len(row)) for row in references]
    ref_vectors, valid = cider_reward.reference_vectors(tf.constant(padded), SETTINGS, frequencies, width)
    cand_vectors = cider_reward.candidate_vectors(tf.constant(ids), tf.constant(lengths),
                                                  tf.constant(vocab.texts()), frequencies)
    return cider_reward.cider_d(cand_vectors, cider_reward.Vectors.from_tuple(ref_vectors), valid).numpy()


def test_reward_equals_pycocoevalcaps_cider_d_on_the_same_captions():
    frequencies = DocumentFrequencies.from_references(REFERENCES, SETTINGS)
    ours = _rewards(CANDIDATES, REFERENCES, frequencies)
    for k in range(len(CANDIDATES[0])):
        scorer = CiderScorer(n=4, sigma=6.0)  # pycocoevalcap's CIDEr-D, document frequencies of these references
        for candidates, references in zip(CANDIDATES, REFERENCES):
            scorer += (candidates[k], references)
        _, theirs = scorer.compute_score()
        np.testing.assert_allclose(ours[:, k], theirs, rtol=0, atol=1e-6)
    assert ours.max() > 1.0 and (ours[:, 2] < ours[:, 0]).all()  # not all zeros: exact beats partial


def test_reward_hand_computed_cases():
    references = [["a red circle left"], ["a blue square right"]]
    frequencies = DocumentFrequencies.from_references(references, SETTINGS)
    assert frequencies.num_documents == 2
    got = _rewards([["a red circle left", "a", "green triangle", "red circle"]] * 2, references, frequencies)[0]
    l = math.log(2.0)  # idf of an n-gram in one of the two images' references; "a" is in both: idf 0
    unigrams = (2 * l * l) / (math.sqrt(2) * l * math.sqrt(3) * l)  # {red, circle} . {a:0, red, circle, left}
    bigrams = (l * l) / (l * math.sqrt(3) * l)  # {red circle} . {a red, red circle, circle left}
    partial = 10.0 * (unigrams + bigrams + 0 + 0) / 4 * math.exp(-(1 - 3) ** 2 / (2 * 6.0 ** 2))
    np.testing.assert_allclose(got, [10.0, 0.0, 0.0, partial], atol=1e-9)


def test_document_frequencies_are_kept_in_the_run_dir_and_recomputed_for_other_data(shapes_data, tmp_path):
    from caption_app.data import manifest as manifest_lib

    manifest = manifest_lib.load(shapes_data)
    first = DocumentFrequencies.for_run(str(tmp_path), manifest, "sha-a")
    path = tmp_path / "scst" / cider_reward.DF_FILE
    assert path.is_file() and first.num_documents == manifest.split("train").num_images
    stamp = path.stat().st_mtime_ns
    again = DocumentFrequencies.for_run(str(tmp_path), manifest, "sha-a")  # read back, not recomputed
    assert path.stat().st_mtime_ns == stamp and np.array_equal(again.keys, first.keys)
    np.testing.assert_array_equal(again.counts, first.counts)
    assert DocumentFrequencies.load(str(path), cider_reward.train_meta(manifest, "sha-b")) is None  # other vocab
    tampered = DocumentFrequencies(first.keys, first.counts * 0 + 10 ** 6, first.num_documents, first.meta)
    tampered.save(str(path))  # counts over the number of images: recomputed, never trusted
    np.testing.assert_array_equal(DocumentFrequencies.for_run(str(tmp_path), manifest, "sha-a").counts, first.counts)
    path.write_bytes(b"not an npz")  # damaged: recomputed, never trusted
    assert DocumentFrequencies.for_run(str(tmp_path), manifest, "sha-a").num_documents == first.num_documents


def test_the_gradient_is_of_the_sampled_captions_log_probabilities(trained_run):
    """The teacher-forced pass the loss differentiates gives each sample the log-probability the
    sampler drew it with (on-policy), and the loss is -sum(advantage x that)."""
    model, config, vocab, _, _ = run_loader.load_model(trained_run.run_dir)
    frequencies = DocumentFrequencies.from_references([["a red circle"], ["a blue square"]], SETTINGS)
    trainer = scst.ScstTrainer(model, vocab, frequencies, samples=3, baseline="mean", max_length=8, seed=0,
                               jit_compile=False)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    outputs = model.image_encoder.backbone_outputs(images, training=False)
    state = model.decoder.initial_state(model.image_encoder.from_backbone_outputs(outputs, training=False))
    result = trainer._search(Sample(num_samples=3), state, seeds=tf.constant([5, 9], tf.int64))
    input_ids = tf.concat([tf.fill([2, 3, 1], START_ID), result.ids[:, :, :-1]], axis=2)
    mask = tf.cast(tf.range(8)[None, None, :] < result.lengths[:, :, None], tf.float32)
    advantage = tf.constant([[1.0, -0.5, 0.0], [2.0, 0.0, 0.25]])
    loss_sum, sample_logp, grads = trainer._loss_and_gradients(outputs, input_ids, result.ids, mask, advantage,
                                                              tf.constant(1.0))
    np.testing.assert_allclose(sample_logp.numpy(), result.log_probs.numpy(), rtol=1e-4, atol=1e-4)
    assert float(loss_sum) == pytest.approx(-float(tf.reduce_sum(advantage * result.log_probs)), rel=1e-4)
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


@pytest.fixture(scope="module")
def scst_run(trained_run, tmp_path_factory):
    """The shared cross-entropy run (2 epochs) copied, then `train --run-dir RUN --set train.scst_epochs=1`
    with a mid-epoch backup every 4 steps, stopped at step 6 of the SCST epoch and resumed."""
    run = str(tmp_path_factory.mktemp("scst") / "run")
    shutil.copytree(trained_run.run_dir, run)
    config = run_loader.load_config(run)
    config = Config.from_dict({**config.to_dict(), "train": {
        **config.to_dict()["train"], "scst_epochs": 1, "scst_learning_rate": 0.01, "backup_every_steps": 4}})

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if isinstance(self.model, scst.ScstTrainer) and batch == 5:
                raise KeyboardInterrupt("stopped at step 6 of the SCST epoch")

    with pytest.raises(KeyboardInterrupt):
        train(config, trained_run.data_dir, run, verbose=0, callbacks=[Stop()])
    return run, config


def test_scst_phase_resumes_from_its_backup_and_keeps_the_start_checkpoint(scst_run, trained_run, capsys):
    run, config = scst_run
    start = os.path.join(run, scst.START_CHECKPOINT_DIR, "ckpt-2")
    assert os.path.isfile(start + ".index")  # the cross-entropy model SCST started from, kept
    assert os.path.isfile(os.path.join(run, "scst", cider_reward.DF_FILE))
    capsys.readouterr()
    # As a user adds the phase: the run's own config and data, one --set.
    assert cli_main(["train", "--run-dir", run, "--quiet", *set_args(
        "train.scst_epochs=1", "train.scst_learning_rate=0.01", "train.backup_every_steps=4")]) == 0
    out = capsys.readouterr().out
    assert "scst: 1 passes = 13 steps in 1 epochs" in out  # the budget line
    assert "(epoch 2 of 3, step 4 of 13)" in out and "scst: optimizer restored at step 4" in out
    assert scst.start_checkpoint(run) == start
    state = json.load(open(os.path.join(run, "state.json")))
    assert state["epochs_done"] == 3 and state["finished"]
    # SCST moved the weights from where it started (not a run that trained nothing).
    tuned, *_ = run_loader.load_model(run)
    started, *_ = run_loader.load_model(run, start)
    assert any(np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4
               for a, b in zip(tuned.trainable_weights, started.trainable_weights))
    # The backbone was frozen: SCST changed none of its weights.
    for a, b in zip(tuned.image_encoder.backbone.weights, started.image_encoder.backbone.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # evaluate, caption and export of an SCST checkpoint: tests/test_end_to_end.py.


@pytest.mark.parametrize("assignment,message", [
    ("train.scst_samples=1", "train.scst_samples must be >= 2"),
    ("train.scst_learning_rate=-0.001", "train.scst_learning_rate must be > 0"),
    ("train.scst_baseline=max", "train.scst_baseline must be mean or greedy"),
    ("train.scst_epochs=-1", "train.scst_epochs must be >= 0"),
])
def test_bad_scst_settings_are_one_line_before_anything_is_written(assignment, message, shapes_data, tmp_path,
                                                                    capsys):
    run = tmp_path / "run"
    args = ["train", "--config", "tiny", "--data", shapes_data, "--run-dir", str(run)]
    assert cli_main(args + set_args("train.scst_epochs=1", assignment)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not run.exists()


def test_scst_on_a_train_split_without_references_is_refused_before_anything_is_written(shapes_data, tmp_path,
                                                                                        capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["num_captions"] = 0
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    assert cli_main(["train", "--config", "tiny", "--data", str(data), "--run-dir", str(run),
                     *set_args("train.scst_epochs=1")]) == 2
    err = capsys.readouterr().err.strip()
    # The manifest's own check refuses it first (scst.check guards what passes it): one line, nothing written.
    assert "split 'train' has 40 images" in err and len(err.splitlines()) == 1
    assert not run.exists()


def test_bad_ending_share():
    assert scst.bad_ending_share(["a red circle", "a red circle and a", "a blue square with the", ""]) == 0.5
    assert scst.bad_ending_share([]) == 0.0


def test_train_without_data_on_a_run_dir_whose_manifest_is_damaged_is_one_line(trained_run, tmp_path, capsys):
    """`train --run-dir RUN` (no --data) reads RUN/manifest.json for the data dir: a damaged one is one
    line naming it, and nothing in the run dir changes."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(os.path.join(trained_run.run_dir, "config.json"), run / "config.json")
    (run / "manifest.json").write_bytes(b"\x85\x00 not json")
    assert cli_main(["train", "--run-dir", str(run), *set_args("train.scst_epochs=1")]) == 2
    err = capsys.readouterr().err.strip()
    assert "manifest.json does not say which data the run trained on" in err and len(err.splitlines()) == 1
    assert sorted(os.listdir(run)) == ["config.json", "manifest.json"]
