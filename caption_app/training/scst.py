"""Self-critical sequence training (Rennie et al., CVPR 2017): the third phase, `train.scst_epochs`.

Each step, for every image of the batch:

    K captions sampled (train.scst_samples; the `Sample` strategy at temperature 1, in-graph)
    reward r_k   = CIDEr-D of sample k against the image's references (cider_reward.py: the train
                   split's document frequencies, as pycocoevalcap computes it)
    baseline b_k = mean of the image's OTHER samples' rewards (train.scst_baseline=mean, the default;
                   Luo 2020, "a better variant of SCST"), or the greedy caption's reward (=greedy, Rennie)
    loss         = mean over samples of -(r_k - b_k) * (sum of log p of sample k's words, <end> included)

A sample cut at `decode.max_length` without `<end>` is scored as it stands and
its log-probabilities summed over all its words: a caption that stops
mid-phrase earns no `<end>` credit. The step logs `reward`, `baseline`,
`words` (mean sample length) and `bad_endings`, the share of samples whose last
word is a/an/the/and/of/with (a sign of the reward being gamed).

Where it runs: the frozen backbone once per image (XLA), the sampling and the
reward in-graph outside XLA (the sampler's prefix sharing has data-dependent
shapes; the reward is vectorized, no Python loop per caption), and the
model's part of the step, the teacher-forced pass over the samples and its
gradients, XLA-compiled. No dropout anywhere in the step (the sampling and
the teacher-forced pass are the same policy: the gradient is on-policy).
Under several replicas each computes its samples, rewards and gradients and
the gradient of the global batch's mean loss is applied
(`distribute.apply_global_mean`); an image's samples depend on its position
in the global batch and the step, never on the replica that drew them.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from caption_app import io_utils
from caption_app.config import Config
from caption_app.data.pipeline import make_dataset
from caption_app.data.vocabulary import END_ID, START_ID, Vocabulary
from caption_app.errors import CaptionAppError
from caption_app.inference.strategies import Greedy, Sample
from caption_app.runs import checkpoints as checkpoints_lib
from caption_app.training import cider_reward, distribute
from caption_app.training.cider_reward import DocumentFrequencies, Vectors

BAD_ENDING_WORDS = ("a", "an", "the", "and", "of", "with")
MAX_REFERENCE_WORDS = 64  # references are cut here for the reward (COCO's longest is ~50 words)
START_CHECKPOINT_DIR = os.path.join("scst", "start")  # the cross-entropy checkpoint SCST started from


class ScstError(CaptionAppError, ValueError):
    """Self-critical training cannot run with these settings or this data (the message says why)."""


def check(config: Config, manifest) -> None:
    """Raises ScstError, before anything is written, when `train.scst_epochs` cannot run on `manifest`."""
    if config.train.scst_epochs <= 0:
        return
    train = manifest.split("train") if "train" in manifest.splits else None
    if train is None or train.num_captions <= 0:
        raise ScstError(f"train.scst_epochs={config.train.scst_epochs:g} needs reference captions, but the train "
                        f"split of {manifest.data_dir} has none: self-critical training rewards sampled captions "
                        "by CIDEr-D against them")


def reference_width(manifest) -> int:
    return max(1, min(manifest.max_caption_words, MAX_REFERENCE_WORDS))


def make_scst_dataset(config: Config, manifest, vocab: Vocabulary, sizes, frequencies: DocumentFrequencies):
    """The train split for self-critical training: ({"image": [B, S, S, 3]}, references), repeated.

    references: {"keys", "weights", "first" [B, R, 4, G], "norms" [B, R, 4], "bigrams", "valid" [B, R]}: every
    reference caption of each image as CIDEr-D sees it (cider_reward.Vectors), computed in the input pipeline.
    """
    ds = make_dataset(config, manifest, vocab, "train", training=True, sizes=sizes, with_ids=True)
    frequencies.table()  # made here, eagerly: not inside the map function's graph
    width = reference_width(manifest)

    def to_references(inputs, targets, extras):
        del targets
        vectors, valid = cider_reward.reference_vectors(extras["captions"], manifest.tokenizer, frequencies, width)
        keys, weights, first, norms, bigrams = vectors
        return {"image": inputs["image"]}, {"keys": keys, "weights": weights, "first": first, "norms": norms,
                                            "bigrams": bigrams, "valid": valid}

    return ds.map(to_references, num_parallel_calls=tf.data.AUTOTUNE).repeat()


def keep_start_checkpoint(run_dir: str, checkpoint: str | None) -> str | None:
    """Copies the cross-entropy checkpoint SCST starts from to RUN/scst/start (SCST's own epochs would
    rotate it out of RUN/checkpoints); returns the copy's path, to pass to `evaluate --checkpoint`."""
    if not checkpoint:
        return None
    target_dir = os.path.join(run_dir, START_CHECKPOINT_DIR)
    target = os.path.join(target_dir, os.path.basename(checkpoint))
    if io_utils.exists(target + ".index"):
        return target
    tmp_dir = target_dir + ".tmp"
    if io_utils.exists(tmp_dir):
        io_utils.rmtree(tmp_dir)  # ours: a copy interrupted before it was renamed
    io_utils.makedirs(tmp_dir)
    for path in io_utils.glob(checkpoint + ".*"):
        io_utils.copyfile(path, os.path.join(tmp_dir, os.path.basename(path)))
    if io_utils.exists(target_dir):
        io_utils.rmtree(target_dir)
    io_utils.replace(tmp_dir, target_dir)
    return target


def start_checkpoint(run_dir: str) -> str | None:
    """RUN/scst/start's checkpoint (the cross-entropy model SCST started from), or None."""
    paths = checkpoints_lib.checkpoint_paths(os.path.join(run_dir, START_CHECKPOINT_DIR))
    return paths[-1] if paths else None


class ScstTrainer(distribute.FitModel):
    """What `fit` runs in the SCST phase: sample, reward, and the policy gradient of `model`.

    Owns no variables (checkpoints keep holding `model`); compile it with
    `jit_compile=False` (the sampler cannot be XLA-compiled) and
    `jit_compile` here puts the backbone and the model's part of the step in XLA.
    """

    def __init__(self, model: keras.Model, vocab: Vocabulary, frequencies: DocumentFrequencies, *, samples: int,
                 baseline: str, max_length: int, seed: int, clip_norm: float = 0.0, jit_compile: bool = True,
                 multi_worker: bool = False, **kwargs):
        super().__init__(model, name=f"{model.name}_scst", **kwargs)
        self.samples, self.baseline, self.max_length = samples, baseline, max_length
        self.seed, self.clip_norm, self.multi_worker = seed, clip_norm, multi_worker
        self.per_replica_jit_compile = jit_compile
        self.frequencies = frequencies
        frequencies.table()  # made eagerly, outside the step's graph
        self.texts = tf.constant(vocab.texts(), tf.string)  # id -> the word it decodes as
        bad = [vocab.word_to_id(w) for w in BAD_ENDING_WORDS if vocab.has_word(w)]
        self.bad_ending_ids = tf.constant(bad or [-1], tf.int32)
        self._backbone_fn = tf.function(lambda images: model.image_encoder.backbone_outputs(images, training=False),
                                        jit_compile=jit_compile, reduce_retracing=True)
        self._grads_fn = tf.function(self._loss_and_gradients, jit_compile=jit_compile, reduce_retracing=True)

    def compile(self, **kwargs):
        super().compile(**kwargs)
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in ("loss", "reward", "baseline", "words", "bad_endings")}

    @property
    def metrics(self):
        return list(getattr(self, "trackers", {}).values())

    # -- pieces --------------------------------------------------------------------------------------

    def _step(self, ids, state):
        logits, new_state = self.inner.decoder.step(ids, state)
        return tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1), new_state

    def _search(self, strategy, state, seeds=None):
        return strategy.search(self._step, state, start_id=START_ID, end_id=END_ID, max_length=self.max_length,
                               seeds=seeds)

    def _rewards(self, result, references: Vectors, reference_valid):
        """SearchResult [b, K, T] -> (CIDEr-D [b, K] float32, words [b, K] int32, ended [b, K] bool)."""
        ids, lengths = result.ids, result.lengths
        last = tf.gather(ids, tf.maximum(lengths - 1, 0), batch_dims=2)  # [b, K]
        ended = (lengths > 0) & tf.equal(last, END_ID)
        words = lengths - tf.cast(ended, tf.int32)
        candidates = cider_reward.candidate_vectors(ids, words, self.texts, self.frequencies)
        return tf.cast(cider_reward.cider_d(candidates, references, reference_valid), tf.float32), words, ended

    def _loss_and_gradients(self, backbone_outputs, input_ids, targets, mask, advantage, loss_scale):
        """The model's part, in XLA: (sum over samples of -advantage * log p(sample), d(that * loss_scale)/dw)."""
        with tf.GradientTape() as tape:
            embedding = self.inner.image_encoder.from_backbone_outputs(backbone_outputs, training=False)
            logits = self.inner.decoder(embedding, input_ids, training=False)  # [b, K, T, V]
            log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
            word_logp = tf.gather(log_probs, targets, batch_dims=3)  # [b, K, T]
            sample_logp = tf.reduce_sum(word_logp * mask, axis=-1)  # [b, K]
            loss_sum = -tf.reduce_sum(tf.stop_gradient(advantage) * sample_logp)
            scaled = loss_sum * loss_scale
        variables = self.inner.trainable_variables
        grads = tape.gradient(scaled, variables)
        grads = [tf.convert_to_tensor(g) if g is not None else tf.zeros_like(v) for g, v in zip(grads, variables)]
        return loss_sum, sample_logp, grads

    def _seeds(self, batch):
        """[b] int64: one seed per image from (train.seed, step, the image's place in the global batch)."""
        context = tf.distribute.get_replica_context()
        replica = tf.cast(context.replica_id_in_sync_group if context is not None else 0, tf.int64)
        global_batch = tf.cast(batch, tf.int64) * context.num_replicas_in_sync
        step = tf.cast(self.optimizer.iterations, tf.int64)
        position = replica * tf.cast(batch, tf.int64) + tf.range(batch, dtype=tf.int64)
        return (self.seed * 1_000_003 + step * global_batch + position) % (2 ** 32)

    # -- the step ------------------------------------------------------------------------------------

    def train_step(self, data):
        inputs, refs = data[0], data[1]
        images = inputs["image"]
        batch = tf.shape(images)[0]
        k = self.samples
        references = Vectors(refs["keys"], refs["weights"], refs["first"], refs["norms"], refs["bigrams"])

        outputs = self._backbone_fn(images)
        state = self.inner.decoder.initial_state(
            self.inner.image_encoder.from_backbone_outputs(outputs, training=False))
        sampled = self._search(Sample(num_samples=k), state, seeds=self._seeds(batch))
        rewards, words, ended = self._rewards(sampled, references, refs["valid"])  # [b, K]
        valid = tf.cast(sampled.lengths > 0, tf.float32)  # an empty slot (nothing to say) trains nothing
        if self.baseline == "greedy":
            greedy = self._search(Greedy(), state)
            baseline = tf.repeat(self._rewards(greedy, references, refs["valid"])[0], k, axis=1)  # [b, K]
        else:  # the mean of the image's other samples
            baseline = (tf.reduce_sum(rewards * valid, axis=1, keepdims=True) - rewards * valid) / tf.maximum(
                tf.reduce_sum(valid, axis=1, keepdims=True) - valid, 1.0)
        advantage = (rewards - baseline) * valid

        t = self.max_length
        starts = tf.fill(tf.stack([batch, k, 1]), START_ID)
        input_ids = tf.concat([starts, sampled.ids[:, :, :-1]], axis=2)  # [b, K, T]
        mask = tf.cast(tf.range(t)[None, None, :] < sampled.lengths[:, :, None], tf.float32)  # [b, K, T]
        loss_scale = distribute.current_loss_scale(self.optimizer)
        loss_sum, _, grads = self._grads_fn(outputs, input_ids, sampled.ids, mask, advantage, loss_scale)
        count = tf.reduce_sum(valid)
        context = tf.distribute.get_replica_context()
        sums = context.all_reduce("sum", [tf.reduce_sum(rewards * valid), tf.reduce_sum(baseline * valid),
                                          tf.reduce_sum(tf.cast(words, tf.float32) * valid),
                                          tf.reduce_sum(self._bad_endings(sampled.ids, words) * valid)])
        loss_sum, count = distribute.apply_global_mean(self.optimizer, self.inner.trainable_variables, grads,
                                                       loss_sum, count, loss_scale=loss_scale,
                                                       clip_norm=self.clip_norm)
        for name, value in zip(("loss", "reward", "baseline", "words", "bad_endings"), [loss_sum] + sums):
            self.trackers[name].update_state(value / count)
        logs = {name: tracker.result() for name, tracker in self.trackers.items()}
        if self.multi_worker:  # see ReplicaTrainer.train_step (tensorflow/tensorflow#72388)
            logs = {name: tf.reshape(v, [1]) for name, v in logs.items()}
        return logs

    def _bad_endings(self, ids, words):
        """[b, K] float32: 1 where the caption's last word is one of BAD_ENDING_WORDS."""
        last = tf.gather(ids, tf.maximum(words - 1, 0), batch_dims=2)
        bad = tf.reduce_any(tf.equal(last[..., None], self.bad_ending_ids), axis=-1) & (words > 0)
        return tf.cast(bad, tf.float32)


def compile_for_scst(model: keras.Model, optimizer, config: Config, vocab: Vocabulary,
                     frequencies: DocumentFrequencies, strategy: tf.distribute.Strategy) -> ScstTrainer:
    """The SCST phase's fit model, compiled under `strategy` (XLA inside, see ScstTrainer)."""
    t = config.train
    trainer = ScstTrainer(model, vocab, frequencies, samples=t.scst_samples, baseline=t.scst_baseline,
                          max_length=config.decode.max_length, seed=t.seed, clip_norm=t.clip_gradient_norm,
                          jit_compile=t.jit_compile, multi_worker=distribute.num_workers(strategy) > 1)
    with strategy.scope():
        trainer.compile(optimizer=optimizer, jit_compile=False)
    return trainer


def bad_ending_share(captions: list[str]) -> float:
    """The share of captions whose last word is one of BAD_ENDING_WORDS (for reports and benchmarks)."""
    if not captions:
        return 0.0
    bad = sum(1 for c in captions if c.split() and c.split()[-1] in BAD_ENDING_WORDS)
    return bad / len(captions)


