"""CIDEr-D in-graph: the self-critical reward, computed as pycocoevalcap's CIDEr-D scorer computes it.

pycocoevalcap's `CiderScorer` (the "CIDEr" every captioning paper reports) is
CIDEr-D: n-grams of 1 to 4 words, each weighted by term frequency x
log(documents / document frequency) (a document is an image's reference set;
an n-gram in none counts as in one), one cosine per n between the
candidate's vector and each reference's with the candidate's weight clipped
to the reference's (min(c, r) * r), times a Gaussian length penalty
exp(-delta^2 / (2 sigma^2)) with sigma 6 and delta the difference of the two
captions' *bigram* counts (pycocoevalcap counts length that way), averaged
over n and over the references, times 10.

Here the document frequencies are those of the TRAIN split's references
(`DocumentFrequencies.compute`, stored once in the run dir with the
vocabulary's hash and the train split's counts: RUN/scst/cider_df.npz), as
self-critical.pytorch's `coco-train-idxs` does, not those of the captions
being scored (pycocoevalcap's default). Words are the training tokenizer's
(the vocabulary's words, out-of-vocabulary words kept as they are in
references; a candidate's `<unk>` matches nothing). An n-gram is its words
joined by spaces, keyed by TensorFlow's 64-bit fingerprint
(`tf.strings.to_hash_bucket_fast`), so the table holds int64 keys only.

Everything is vectorized TensorFlow, in float64, with no Python loop per
caption: a caption becomes `Vectors` (its distinct n-grams' keys and tf-idf
weights in a fixed [rows, 4, G] layout, their norms and its bigram count);
`cider_d` compares every candidate with every reference of its image by
key equality over [G_c, G_r] pairs. The reference side runs in the
tf.data pipeline (`reference_vectors`), the candidate side in the training
step (`candidate_vectors`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os

import numpy as np
import tensorflow as tf

from caption_app import io_utils
from caption_app.data.vocabulary import TokenizerSettings, tokenize
from caption_app.errors import CaptionAppError

MAX_N = 4  # n-grams of 1..4 words
SIGMA = 6.0  # the length penalty's sigma (pycocoevalcap's default)
_BUCKETS = 2 ** 63 - 1  # to_hash_bucket_fast: the fingerprint modulo this (non-negative int64)
DF_FILE = "cider_df.npz"
_CHUNK = 4096


class RewardError(CaptionAppError, ValueError):
    """The CIDEr-D document frequencies cannot be computed or do not belong to this run."""


def ngram_keys(words: tf.RaggedTensor, width: int) -> tuple[tf.Tensor, tf.Tensor]:
    """words [R, (w)] string -> (keys [R, 4, width] int64, valid [R, 4, width] bool).

    Row r, order n (0: unigrams ... 3: 4-grams), position i holds the key of
    the n-gram starting at word i (words beyond `width` are cut).
    """
    words = words[:, :width]
    keys, valid = [], []
    for n in range(1, MAX_N + 1):
        grams = tf.strings.ngrams(words, ngram_width=n, separator=" ", pad_values=None)  # [R, (w - n + 1)]
        hashed = tf.strings.to_hash_bucket_fast(grams, _BUCKETS)  # [R, (.)] int64
        shape = tf.stack([tf.cast(words.nrows(), tf.int64), width])
        keys.append(hashed.to_tensor(default_value=0, shape=shape))
        valid.append(tf.ones_like(hashed, tf.bool).to_tensor(default_value=False, shape=shape))
    return tf.stack(keys, axis=1), tf.stack(valid, axis=1)


@dataclasses.dataclass
class Vectors:
    """Captions as CIDEr-D sees them, [..., 4, G] per caption (leading dimensions any)."""

    keys: tf.Tensor  # [..., 4, G] int64: the n-gram at each position
    weights: tf.Tensor  # [..., 4, G] float64: tf x idf at an n-gram's first position, 0 elsewhere
    first: tf.Tensor  # [..., 4, G] bool: the first position of each distinct n-gram
    norms: tf.Tensor  # [..., 4] float64: each order's vector norm
    bigrams: tf.Tensor  # [...] float64: the caption's bigram count (pycocoevalcap's "length")

    def as_tuple(self) -> tuple:
        return self.keys, self.weights, self.first, self.norms, self.bigrams

    @classmethod
    def from_tuple(cls, values) -> "Vectors":
        return cls(*values)


def vectors(keys: tf.Tensor, valid: tf.Tensor, idf_of) -> Vectors:
    """(keys, valid) [..., 4, G] -> Vectors; `idf_of(keys)` gives each key's log(docs) - log(max(1, df))."""
    same = tf.equal(keys[..., :, None], keys[..., None, :]) & valid[..., :, None] & valid[..., None, :]  # [..., G, G]
    term_freq = tf.reduce_sum(tf.cast(same, tf.float64), axis=-1)  # [..., 4, G]
    width = tf.shape(keys)[-1]
    ones = tf.ones(tf.stack([width, width]), tf.float32)
    earlier = (tf.linalg.band_part(ones, -1, 0) - tf.eye(width)) > 0  # [G, G]: [i, j] is j < i
    # Position i is the first of its n-gram when no earlier position j < i holds it.
    seen_before = tf.reduce_any(same & earlier, axis=-1)  # [..., 4, G]
    first = valid & ~seen_before
    weights = tf.where(first, term_freq * idf_of(keys), 0.0)
    norms = tf.sqrt(tf.reduce_sum(tf.square(weights), axis=-1))  # [..., 4]
    bigrams = tf.reduce_sum(tf.cast(valid[..., 1, :], tf.float64), axis=-1)
    return Vectors(keys, weights, first, norms, bigrams)


def cider_d(candidates: Vectors, references: Vectors, reference_valid: tf.Tensor,
            sigma: float = SIGMA) -> tf.Tensor:
    """CIDEr-D of each candidate against its image's references.

    Args:
      candidates: Vectors [B, K, 4, Gc] (K candidates per image).
      references: Vectors [B, R, 4, Gr] (R reference slots per image).
      reference_valid: [B, R] bool, the slots holding a reference.
    Returns:
      [B, K] float64, pycocoevalcap's CIDEr-D (x 10) with these document frequencies.
    """
    c, r = candidates, references

    def by_order(x):  # [B, N, 4, G] -> [B * 4, N, G]: TensorFlow broadcasts at most 5 dimensions
        x = tf.transpose(x, [0, 2, 1, 3])
        return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))

    ck, cf, cw = by_order(c.keys), by_order(c.first), by_order(c.weights)  # [B * 4, K, Gc]
    rk, rf, rw = by_order(r.keys), by_order(r.first), by_order(r.weights)  # [B * 4, R, Gr]
    match = tf.equal(ck[:, :, None, :, None], rk[:, None, :, None, :])  # [B * 4, K, R, Gc, Gr]
    match &= cf[:, :, None, :, None] & rf[:, None, :, None, :]
    cw, rw = cw[:, :, None, :, None], rw[:, None, :, None, :]
    overlap = tf.reduce_sum(tf.where(match, tf.minimum(cw, rw) * rw, 0.0), axis=[-2, -1])  # [B * 4, K, R]
    overlap = tf.reshape(overlap, tf.concat([[-1, MAX_N], tf.shape(overlap)[1:]], 0))  # [B, 4, K, R]
    overlap = tf.transpose(overlap, [0, 2, 3, 1])  # [B, K, R, 4]
    denominator = c.norms[:, :, None, :] * r.norms[:, None, :, :]  # [B, K, R, 4]
    cosine = tf.where(denominator != 0, overlap / tf.where(denominator != 0, denominator, 1.0), overlap)
    delta = c.bigrams[:, :, None] - r.bigrams[:, None, :]  # [B, K, R]
    penalty = tf.exp(-tf.square(delta) / (2.0 * sigma ** 2))
    per_reference = tf.reduce_mean(cosine, axis=-1) * penalty  # [B, K, R]
    valid = tf.cast(reference_valid, tf.float64)[:, None, :]
    count = tf.maximum(tf.reduce_sum(valid, axis=-1), 1.0)  # [B, 1]
    return 10.0 * tf.reduce_sum(per_reference * valid, axis=-1) / count


class DocumentFrequencies:
    """The train split's n-gram document frequencies: key -> in how many images' references it occurs.

    Args:
      keys: [n] int64, sorted; counts: [n] float64; num_documents: images with references.
      meta: what they were computed from (checked by `load`).
    """

    def __init__(self, keys: np.ndarray, counts: np.ndarray, num_documents: int, meta: dict):
        self.keys, self.counts = np.asarray(keys, np.int64), np.asarray(counts, np.float64)
        self.num_documents, self.meta = int(num_documents), dict(meta)
        self._table = None

    @property
    def log_documents(self) -> float:
        return float(np.log(float(self.num_documents)))

    def table(self) -> tf.lookup.StaticHashTable:
        if self._table is None:
            init = tf.lookup.KeyValueTensorInitializer(tf.constant(self.keys, tf.int64),
                                                       tf.constant(self.counts, tf.float64))
            self._table = tf.lookup.StaticHashTable(init, default_value=0.0)
        return self._table

    def idf(self, keys: tf.Tensor) -> tf.Tensor:
        """keys int64 [...] -> log(documents) - log(max(1, df)) [...] float64."""
        df = self.table().lookup(keys)
        return self.log_documents - tf.math.log(tf.maximum(df, 1.0))

    @classmethod
    def from_references(cls, references: list[list[str]], settings: TokenizerSettings,
                        meta: dict | None = None) -> "DocumentFrequencies":
        """Each image's reference captions (raw text) -> their document frequencies (images with
        no caption left after tokenization are not documents)."""
        counts: dict[int, int] = {}
        documents = 0
        for start in range(0, len(references), _CHUNK):
            chunk = references[start:start + _CHUNK]
            flat = [c for refs in chunk for c in refs]
            if not flat:
                continue
            words = tokenize(tf.constant(flat, tf.string), settings)
            keys, valid = ngram_keys(words, int(tf.reduce_max(words.row_lengths())) if flat else 1)
            keys = keys.numpy()
            valid = valid.numpy()
            row = 0
            for refs in chunk:
                image_keys = keys[row:row + len(refs)][valid[row:row + len(refs)]]
                row += len(refs)
                if image_keys.size == 0:
                    continue
                documents += 1
                for key in np.unique(image_keys).tolist():
                    counts[key] = counts.get(key, 0) + 1
        if documents == 0:
            raise RewardError("the train split has no reference captions, so there is no CIDEr-D reward for "
                              "self-critical training (train.scst_epochs needs a split with captions)")
        keys = np.array(sorted(counts), np.int64)
        return cls(keys, np.array([counts[k] for k in keys.tolist()], np.float64), documents, meta or {})

    @classmethod
    def compute(cls, manifest, vocab_sha1: str) -> "DocumentFrequencies":
        """The document frequencies of `manifest`'s train split, read from its records."""
        from caption_app.data import records

        references: list[list[str]] = []
        files = manifest.files("train")
        for record in tf.data.TFRecordDataset(files).map(records.parse_example):
            references.append([c.decode("utf-8") for c in record["captions"].numpy().tolist()])
        return cls.from_references(references, manifest.tokenizer, train_meta(manifest, vocab_sha1))

    def save(self, path: str) -> None:
        io_utils.makedirs(os.path.dirname(io_utils.abspath(path)))
        tmp = path + ".tmp"
        with io_utils.open(tmp, "wb") as f:
            np.savez(f, keys=self.keys, counts=self.counts, num_documents=self.num_documents,
                     meta=json.dumps(self.meta, sort_keys=True))
        io_utils.replace(tmp, path)  # complete, or not there

    @classmethod
    def load(cls, path: str, expected_meta: dict) -> "DocumentFrequencies | None":
        """The stored frequencies, or None when missing, unreadable or computed from other data."""
        if not io_utils.exists(path):
            return None
        try:
            with io_utils.open(path, "rb") as f:
                data = np.load(io.BytesIO(f.read()), allow_pickle=False)
                meta = json.loads(str(data["meta"]))
                out = cls(data["keys"], data["counts"], int(data["num_documents"]), meta)
        except (OSError, ValueError, KeyError):
            return None
        if meta != expected_meta or not out._consistent():
            return None  # other data, or edited: recomputed, never trusted
        return out

    def _consistent(self) -> bool:
        """Keys sorted and distinct, one count each, every count in [1, documents], documents <= train images."""
        keys, counts = self.keys, self.counts
        return (keys.ndim == 1 and counts.shape == keys.shape and bool(np.all(keys[1:] > keys[:-1]))
                and 0 < self.num_documents <= int(self.meta.get("train_images", 0))
                and bool(np.all((counts >= 1) & (counts <= self.num_documents))))

    @classmethod
    def for_run(cls, run_dir: str, manifest, vocab_sha1: str, *, write: bool = True) -> "DocumentFrequencies":
        """RUN/scst/cider_df.npz when it belongs to this train split and vocabulary; else computed (and stored)."""
        path = os.path.join(run_dir, "scst", DF_FILE)
        meta = train_meta(manifest, vocab_sha1)
        stored = cls.load(path, meta)
        if stored is not None:
            return stored
        computed = cls.compute(manifest, vocab_sha1)
        if write:
            computed.save(path)
        return computed


def train_meta(manifest, vocab_sha1: str) -> dict:
    """What a run's document frequencies depend on: the train split and its tokenizer, and the vocabulary."""
    train = manifest.split("train")
    files = hashlib.sha1("\n".join(os.path.basename(f) for f in manifest.files("train")).encode()).hexdigest()
    return {"vocab_sha1": vocab_sha1, "train_images": train.num_images, "train_captions": train.num_captions,
            "train_files_sha1": files, "tokenizer": manifest.tokenizer.to_dict(), "max_n": MAX_N,
            "hash": "to_hash_bucket_fast(2**63-1)"}


def reference_vectors(captions: tf.Tensor, settings: TokenizerSettings, frequencies: DocumentFrequencies,
                      width: int) -> tuple[tuple, tf.Tensor]:
    """One image's (or a batch's) raw reference captions [..., R] string ("" = no reference) ->
    (Vectors [..., R, 4, width] as a tuple, valid [..., R] bool)."""
    shape = tf.shape(captions)
    flat = tf.reshape(captions, [-1])
    words = tokenize(flat, settings)
    keys, valid = ngram_keys(words, width)
    vec = vectors(keys, valid, frequencies.idf)
    has_words = words.row_lengths() > 0
    outer = tf.concat([shape, [MAX_N, width]], 0)
    out = Vectors(tf.reshape(vec.keys, outer), tf.reshape(vec.weights, outer), tf.reshape(vec.first, outer),
                  tf.reshape(vec.norms, tf.concat([shape, [MAX_N]], 0)), tf.reshape(vec.bigrams, shape))
    return out.as_tuple(), tf.reshape(has_words, shape)


def candidate_vectors(ids: tf.Tensor, words: tf.Tensor, texts: tf.Tensor,
                      frequencies: DocumentFrequencies) -> Vectors:
    """Generated captions ids [..., T] int32 with `words` [...] int32 words each (no <end>) -> Vectors
    [..., 4, T]; `texts` [V] string maps an id to its word."""
    shape = tf.shape(ids)
    width = ids.shape[-1] if ids.shape[-1] is not None else shape[-1]
    flat_ids = tf.reshape(ids, [-1, shape[-1]])
    flat_words = tf.reshape(words, [-1])
    ragged = tf.RaggedTensor.from_tensor(tf.gather(texts, flat_ids), lengths=flat_words)
    keys, valid = ngram_keys(ragged, width)
    vec = vectors(keys, valid, frequencies.idf)
    lead = shape[:-1]
    outer = tf.concat([lead, [MAX_N, width]], 0)
    return Vectors(tf.reshape(vec.keys, outer), tf.reshape(vec.weights, outer), tf.reshape(vec.first, outer),
                   tf.reshape(vec.norms, tf.concat([lead, [MAX_N]], 0)), tf.reshape(vec.bigrams, lead))
