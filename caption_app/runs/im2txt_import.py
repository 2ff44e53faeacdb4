"""Import an im2txt (TF1 Show and Tell) checkpoint and its word_counts.txt into a run dir.

    python -m caption_app import-im2txt --checkpoint model.ckpt-2000000 --word-counts word_counts.txt --run-dir RUN

The run dir is complete (config, fingerprint, vocabulary, tensor sizes, state,
one checkpoint at epoch 0, and `im2txt_import.json` saying where it came
from): `evaluate`, `caption`, `export` read it as any other, and `train`
continues from it. Everything is checked before anything is written, and it
is written into a hidden staging dir beside RUN that is renamed into place last.

What maps where (shared/reference/im2txt/README.md spells out im2txt's math):

    InceptionV3/*                  the inception_v3 backbone, through slim_import's map
    image_embedding/weights        image_embedding kernel [2048, E] (no bias, as here)
    seq_embedding/map [V, E]       word_embedding rows, reordered to the project's ids
    lstm/basic_lstm_cell/kernel    [x; h] rows split into the LSTM's kernel and recurrent kernel;
      (pre-TF-1.2: .../weights)    gate columns i, j, f, o -> Keras' i, f, c, o (`basic_lstm_to_keras`)
    lstm/basic_lstm_cell/bias      the same gate order, plus BasicLSTMCell's forget bias 1.0,
      (pre-TF-1.2: .../biases)     which im2txt adds at run time and Keras does not
    logits/weights, logits/biases  logits kernel columns and bias, reordered to the project's ids

`global_step`, optimizer slots (`<variable>/<slot>`, `beta1_power`, ...) and
InceptionV3's classifier heads are ignored; anything else that is missing,
extra or mis-shaped is listed in the error.

Vocabulary: im2txt's ids are the line numbers of word_counts.txt (`<UNK>`
appended when absent), with `<S>` and `</S>` wherever counting put them; the
project's are `<pad>` 0, `<start>` 1, `<end>` 2, `<unk>` 3, then vocab.txt's
words. The run's vocab.txt holds im2txt's other words in im2txt's id order,
then a placeholder `<unused_N>` for each id N the checkpoint has a row for but
no word (im2txt's vocab_size 12000 > 11520 words), which decodes as `<unk>`
as im2txt's `id_to_word` does. Every im2txt id keeps its embedding row and
logit column (`Im2txtVocabulary.rows`), so the softmax is im2txt's over all
its ids; `<pad>` gets a zero row and a logit of PAD_LOGIT, which never wins
and takes no probability (exp underflows to 0).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from caption_app import config as config_lib
from caption_app import io_utils
from caption_app.runs import checkpoints as checkpoints_lib
from caption_app.runs import layout as run_layout
from caption_app.data.pipeline import TensorSizes
from caption_app.data.vocabulary import PLACEHOLDER, Vocabulary
from caption_app.inference.settings import DecodeSettings
from caption_app.io_utils import write_json_atomic
from caption_app.model import show_and_tell, slim_import
from caption_app.errors import CaptionAppError

IM2TXT_START, IM2TXT_END, IM2TXT_UNK = "<S>", "</S>", "<UNK>"
PAD_LOGIT = -1e9  # the <pad> id's logit bias (its kernel column is 0): never chosen, probability 0
IMPORT_FILE = "im2txt_import.json"

IMAGE_EMBEDDING = "image_embedding/weights"
WORD_EMBEDDING = "seq_embedding/map"
LOGITS_WEIGHTS, LOGITS_BIASES = "logits/weights", "logits/biases"
# BasicLSTMCell's variable names: TF >= 1.2, and before (the `Key ... not found in checkpoint` of old checkpoints).
LSTM_NAMES = (("lstm/basic_lstm_cell/kernel", "lstm/basic_lstm_cell/bias"),
              ("lstm/basic_lstm_cell/weights", "lstm/basic_lstm_cell/biases"))
_IGNORED = ("global_step", "beta1_power", "beta2_power")  # step counter, Adam's non-slot accumulators
_IGNORED_SCOPES = ("InceptionV3/AuxLogits/", "InceptionV3/Logits/", "OptimizeLoss/")
_BYTES_REPR = re.compile(r"""^b(['"]).*\1$""")


class Im2txtImportError(CaptionAppError, ValueError):
    """The checkpoint or word_counts.txt cannot be imported (one line saying why); nothing was written."""


# ---------------------------------------------------------------------------
# The vocabulary.

@dataclasses.dataclass(frozen=True)
class Im2txtVocabulary:
    """word_counts.txt as im2txt's `Vocabulary` reads it.

    Attributes:
      words: im2txt id -> word (the file's lines, `<UNK>` appended when absent).
      counts: their counts (0 for an appended `<UNK>`).
      bytes_form: the words were written as Python bytes reprs (`b'a' 969108`).
    """

    words: tuple[str, ...]
    counts: tuple[int, ...]
    bytes_form: bool = False

    def id_of(self, word: str) -> int:
        return self.words.index(word)

    def to_project(self, num_rows: int) -> tuple[Vocabulary, np.ndarray]:
        """The project vocabulary of a checkpoint with `num_rows` ids, and where each of its ids comes from.

        Returns:
          (vocab, rows): vocab.size == num_rows + 1 (the added `<pad>`); rows [vocab.size] int,
          rows[i] = the im2txt id of project id i, -1 for `<pad>`.
        Raises:
          Im2txtImportError: more words than the checkpoint has rows.
        """
        if len(self.words) > num_rows:
            raise Im2txtImportError(
                f"the word counts file has {len(self.words)} ids (<UNK> included) but the checkpoint's "
                f"{WORD_EMBEDDING} has only {num_rows} rows: they are not from the same im2txt model (its "
                "vocab_size must be at least the number of words)")
        special = (IM2TXT_START, IM2TXT_END, IM2TXT_UNK)
        words = [w for w in self.words if w not in special]
        counts = [c for w, c in zip(self.words, self.counts) if w not in special]
        unused = range(len(self.words), num_rows)
        rows = [-1] + [self.id_of(w) for w in special] + [self.id_of(w) for w in words] + list(unused)
        try:
            vocab = Vocabulary(words + [PLACEHOLDER.format(i) for i in unused], counts + [0] * len(unused))
        except ValueError as err:
            raise Im2txtImportError(f"the word counts file cannot be this project's vocabulary: {err}") from None
        return vocab, np.asarray(rows)


def parse_word(text: str) -> tuple[str, bool]:
    """A word of word_counts.txt, and whether it was a bytes repr (`b'a'`, `b"don't"`) decoded to text."""
    if _BYTES_REPR.match(text):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text, False
        if isinstance(value, bytes):
            return value.decode("utf-8"), True
    return text, False


def read_word_counts(path: str) -> Im2txtVocabulary:
    """Reads im2txt's word_counts.txt (`word count` lines, plain or `b'word'`), as im2txt's `Vocabulary` does.

    Raises:
      Im2txtImportError: unreadable, a malformed line, a duplicate word, or no `<S>` / `</S>`.
    """
    try:
        text = io_utils.read_small_file(path, "word counts file").decode("utf-8")
    except (OSError, ValueError, tf.errors.OpError, UnicodeDecodeError) as err:
        raise Im2txtImportError(f"cannot read the word counts file {path}: {err}") from None
    lines = text.split("\n")
    while lines and not lines[-1].strip():  # a trailing newline (im2txt writes none)
        lines.pop()
    words, counts, forms = [], [], set()
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise Im2txtImportError(f"{path}:{number}: expected `word count` as im2txt's build_mscoco_data.py "
                                    f"writes it, got {line!r}")
        word, was_bytes = parse_word(fields[0])
        forms.add(was_bytes)
        words.append(word)
        counts.append(int(fields[1]))
    seen: dict[str, int] = {}
    for number, word in enumerate(words, 1):
        if word in seen:
            raise Im2txtImportError(f"{path}:{number}: the word {word!r} is also on line {seen[word]}")
        seen[word] = number
    missing = [w for w in (IM2TXT_START, IM2TXT_END) if w not in seen]
    if missing:
        raise Im2txtImportError(f"{path} has no {' and no '.join(missing)}: it is not an im2txt word_counts.txt "
                                "(im2txt's start and end words are <S> and </S>)")
    if IM2TXT_UNK not in seen:
        words.append(IM2TXT_UNK)
        counts.append(0)
    return Im2txtVocabulary(tuple(words), tuple(counts), bytes_form=True in forms)


# ---------------------------------------------------------------------------
# The LSTM.

def basic_lstm_to_keras(kernel: np.ndarray, bias: np.ndarray, input_size: int,
                        forget_bias: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BasicLSTMCell's weights -> keras.layers.LSTMCell's (kernel, recurrent_kernel, bias).

    Args:
      kernel: [input_size + H, 4H], rows [x; h], gate columns i, j, f, o.
      bias: [4H], the same gate order, without the forget bias.
      input_size: the LSTM's input width (im2txt: the embedding size).
      forget_bias: BasicLSTMCell's, added to f at run time (im2txt: 1.0).
    Returns:
      kernel [input_size, 4H], recurrent_kernel [H, 4H], bias [4H], gate columns i, f, c, o
      (im2txt's j is Keras' c), the forget bias folded in.
    """
    units = kernel.shape[1] // 4
    perm = np.r_[0:units, 2 * units:3 * units, units:2 * units, 3 * units:4 * units]
    folded = bias.astype(np.float32)[perm] + np.r_[np.zeros(units), np.full(units, forget_bias),
                                                   np.zeros(2 * units)].astype(np.float32)
    return kernel[:input_size][:, perm], kernel[input_size:][:, perm], folded


# ---------------------------------------------------------------------------
# The checkpoint.

def _listing(items: list[str], limit: int = 8) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _is_ignored(name: str, names: set[str]) -> bool:
    """global_step, Adam's powers, unused scopes, and slots: `<variable>/<slot>` of another entry."""
    if name in _IGNORED or name.startswith(_IGNORED_SCOPES):
        return True
    parts = name.split("/")
    return any("/".join(parts[:i]) in names for i in range(1, len(parts)))


@dataclasses.dataclass
class _Plan:
    """What the import reads: the checkpoint's reader and the names it will use."""

    path: str
    reader: object
    shapes: dict
    lstm_names: tuple[str, str]
    ignored: list[str]


def _open_checkpoint(path: str) -> _Plan:
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as err:
        first = (getattr(err, "message", None) or str(err)).strip().splitlines()[0]
        raise Im2txtImportError(f"cannot read the checkpoint {path} (give its prefix, e.g. "
                                f"DIR/model.ckpt-2000000, or its directory): {first}") from None
    shapes = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
    names = set(shapes)
    ignored = sorted(n for n in names if _is_ignored(n, names))
    lstm_names = next((pair for pair in LSTM_NAMES if pair[0] in names or pair[1] in names), LSTM_NAMES[0])
    return _Plan(path, reader, shapes, lstm_names, ignored)


def _head_shapes(plan: _Plan) -> dict[str, tuple[int, ...]] | None:
    """The head's expected shapes from the checkpoint's own sizes (None when a size-giving variable is missing)."""
    s = plan.shapes
    if WORD_EMBEDDING not in s or LOGITS_WEIGHTS not in s or len(s[WORD_EMBEDDING]) != 2 \
            or len(s[LOGITS_WEIGHTS]) != 2:
        return None
    (rows, embedding), units = s[WORD_EMBEDDING], s[LOGITS_WEIGHTS][0]
    kernel, bias = plan.lstm_names
    return {IMAGE_EMBEDDING: (2048, embedding), WORD_EMBEDDING: (rows, embedding),
            kernel: (embedding + units, 4 * units), bias: (4 * units,),
            LOGITS_WEIGHTS: (units, rows), LOGITS_BIASES: (rows,)}


def _check(plan: _Plan, expected: dict[str, tuple[int, ...]]) -> None:
    """Raises Im2txtImportError listing missing, extra and mis-shaped variables (one line)."""
    used = set(plan.shapes) - set(plan.ignored)
    missing = sorted(set(expected) - used)
    extra = sorted(used - set(expected))
    mismatched = sorted(f"{n} {list(plan.shapes[n])} (expected {list(expected[n])})"
                        for n in used & set(expected) if plan.shapes[n] != tuple(expected[n]))
    problems = []
    if missing:
        problems.append(f"missing ({len(missing)}): {_listing(missing)}")
    if extra:
        problems.append(f"not in an im2txt model ({len(extra)}): {_listing(extra)}")
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}): {_listing(mismatched)}")
    if problems:
        raise Im2txtImportError(f"cannot import {plan.path} as an im2txt checkpoint: " + "; ".join(problems)
                                + ". Nothing was written")


def _v3_names() -> dict[str, None]:
    """The InceptionV3 entries im2txt's image model has (names only; shapes come from the built backbone)."""
    return {f"InceptionV3/{scope}/{name}": None for scope in slim_import.v3_scopes()
            for name in ("weights", "BatchNorm/beta", "BatchNorm/moving_mean", "BatchNorm/moving_variance")}


# ---------------------------------------------------------------------------
# The run dir.

def import_config(embedding_size: int, lstm_units: int) -> config_lib.Config:
    """The imported run's config: im2txt's model and inference (its preprocessing; its beam search: beam 3,
    each caption continued with its 3 best words, at most 20 ids with <S>, i.e. 19 words with </S>); for
    `train`, im2txt's last phase (everything trainable, SGD at 0.0005, constant)."""
    preset = config_lib.im2txt()
    return dataclasses.replace(
        preset, name="im2txt_import",
        data=dataclasses.replace(preset.data, preprocess="im2txt"),
        model=dataclasses.replace(preset.model, backbone_weights="none", embedding_size=embedding_size,
                                  lstm_units=lstm_units),
        train=dataclasses.replace(preset.train, epochs=1.0, freeze_backbone=False, learning_rate=0.0005,
                                  lr_schedule="constant", fine_tune_epochs=0.0),
        decode=DecodeSettings(beam_size=3, max_length=19, length_normalization=0.0, words_per_beam=3))


def _resolve_prefix(path: str) -> str:
    """A checkpoint directory -> its latest checkpoint's prefix; one of a V2 checkpoint's files
    (`.index`, `.data-00000-of-00001`) -> its prefix; a prefix stays as is."""
    file_of = re.match(r"^(.*)\.(index|data-\d+-of-\d+)$", path)
    if file_of and tf.io.gfile.exists(file_of.group(1) + ".index"):
        return file_of.group(1)
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise Im2txtImportError(f"{path} is a directory without a TF checkpoint (no `checkpoint` file); "
                                    "give the checkpoint's prefix, e.g. DIR/model.ckpt-2000000")
        return latest
    return path


def import_im2txt(checkpoint: str, word_counts: str, run_dir: str) -> dict:
    """Writes run dir `run_dir` from an im2txt checkpoint and its word_counts.txt.

    Args:
      checkpoint: the checkpoint prefix (V1 single file or V2 `.index` + `.data-*`), or its directory.
      word_counts: im2txt's word_counts.txt.
      run_dir: a new (or empty) directory.
    Returns:
      What `im2txt_import.json` records (ids, names, what was ignored).
    Raises:
      Im2txtImportError: nothing was written (the message says why, in one line).
    """
    if os.path.exists(run_dir) and (not os.path.isdir(run_dir) or os.listdir(run_dir)):
        raise Im2txtImportError(f"--run-dir {run_dir} exists and is not an empty directory; import into a new one "
                                "(nothing was written)")
    checkpoint = _resolve_prefix(checkpoint)
    plan = _open_checkpoint(checkpoint)
    im2txt_vocab = read_word_counts(word_counts)
    head = _head_shapes(plan)
    if head is None:  # the sizes are unknown: list the names only
        names = {n: plan.shapes.get(n, ()) for n in (IMAGE_EMBEDDING, WORD_EMBEDDING, *plan.lstm_names,
                                                      LOGITS_WEIGHTS, LOGITS_BIASES)}
        _check(plan, {**{n: plan.shapes.get(n, ()) for n in _v3_names()}, **names})
        raise Im2txtImportError(f"cannot import {checkpoint} as an im2txt checkpoint: {WORD_EMBEDDING} "
                                f"{list(names[WORD_EMBEDDING])} and {LOGITS_WEIGHTS} {list(names[LOGITS_WEIGHTS])} "
                                "are not matrices. Nothing was written")
    rows, embedding_size = head[WORD_EMBEDDING]
    lstm_units = head[LOGITS_WEIGHTS][0]
    vocab, source_rows = im2txt_vocab.to_project(rows)
    config = import_config(embedding_size, lstm_units)
    model = show_and_tell.build_model(config, vocab.size, backbone_weights="none", precision="float32")
    backbone_map = slim_import.inception_v3_variable_map(model.image_encoder.backbone)
    _check(plan, {**{n: tuple(v.shape) for n, v in backbone_map.items()}, **head})

    read = plan.reader.get_tensor
    for name, variable in backbone_map.items():
        variable.assign(read(name).astype(np.float32))
    encoder, decoder = model.image_encoder, model.decoder
    encoder.embedding.kernel.assign(read(IMAGE_EMBEDDING))
    pad = source_rows < 0
    take = np.where(pad, 0, source_rows)
    embeddings = read(WORD_EMBEDDING)[take]
    embeddings[pad] = 0.0
    decoder.word_embedding.embeddings.assign(embeddings)
    kernel, recurrent_kernel, bias = basic_lstm_to_keras(read(plan.lstm_names[0]), read(plan.lstm_names[1]),
                                                         embedding_size)
    cell = decoder.lstm.cell
    cell.kernel.assign(kernel)
    cell.recurrent_kernel.assign(recurrent_kernel)
    cell.bias.assign(bias)
    logits_kernel = read(LOGITS_WEIGHTS)[:, take]
    logits_kernel[:, pad] = 0.0
    logits_bias = read(LOGITS_BIASES)[take]
    logits_bias[pad] = PAD_LOGIT
    decoder.logits.kernel.assign(logits_kernel)
    decoder.logits.bias.assign(logits_bias)

    global_step = None
    if "global_step" in plan.shapes:
        global_step = int(read("global_step"))
    record = {
        "checkpoint": os.path.abspath(checkpoint) if "://" not in checkpoint else checkpoint,
        "word_counts": os.path.abspath(word_counts) if "://" not in word_counts else word_counts,
        "global_step": global_step,
        "lstm_variables": list(plan.lstm_names),
        "word_counts_form": "bytes reprs (b'word')" if im2txt_vocab.bytes_form else "plain",
        "im2txt_ids": {"start": im2txt_vocab.id_of(IM2TXT_START), "end": im2txt_vocab.id_of(IM2TXT_END),
                       "unk": im2txt_vocab.id_of(IM2TXT_UNK), "words": len(im2txt_vocab.words),
                       "rows": rows},
        "im2txt_id_of": [int(i) for i in source_rows],  # project id -> im2txt id (-1: <pad>, added)
        "ignored": plan.ignored,
    }
    sizes = TensorSizes(image_size=model.image_encoder.image_size, num_captions=config.data.captions_per_image,
                        caption_length=config.data.max_caption_length)
    _write_run_dir(run_dir, model, config, vocab, sizes, record)
    return record


def _write_run_dir(run_dir: str, model, config: config_lib.Config, vocab: Vocabulary, sizes: TensorSizes,
                   record: dict) -> None:
    """Writes everything into a staging dir beside `run_dir`, renamed into place last."""
    parent = os.path.dirname(os.path.abspath(run_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(run_dir))}.import-", dir=parent)
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 is not what a run dir made by `train` gets
        config_lib.save(config, os.path.join(staging, run_layout.CONFIG))
        write_json_atomic(os.path.join(staging, run_layout.FINGERPRINT),
                          run_layout.fingerprint(config, vocab, sizes), sort_keys=True)
        vocab.save(os.path.join(staging, run_layout.VOCAB))
        write_json_atomic(os.path.join(staging, run_layout.TENSOR_SIZES), dataclasses.asdict(sizes),
                          sort_keys=True)
        write_json_atomic(os.path.join(staging, IMPORT_FILE), record, sort_keys=True)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, epoch=epoch),
                                             checkpoints_lib.checkpoint_dir(staging), max_to_keep=1)
        manager.save(checkpoint_number=0)
        run_layout.write_state(staging, 0, 0, finished=True)
        if os.path.isdir(run_dir):
            os.rmdir(run_dir)  # empty (checked): the staging dir takes its place
        os.rename(staging, run_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def describe(record: dict, run_dir: str) -> str:
    """The command's summary line."""
    ids = record["im2txt_ids"]
    return (f"imported {record['checkpoint']} (global step {record['global_step']}, {ids['words']} words, "
            f"{ids['rows']} ids) into {run_dir}; caption with `python -m caption_app caption --run-dir {run_dir} "
            "IMAGE`")

