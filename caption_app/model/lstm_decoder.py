"""The LSTM decoder (Show and Tell's): word embedding + LSTM + logits, with the image embedding as the first input.

It implements the decoder interface of caption_app/model/decoders.py (state
spec, initial state from the image, one step, teacher-forced logits) and is
registered there as "lstm". Its decoding state is [h, c] (+ the image input
when a word's prediction reads the image: `image_every_step`, `image_logits`
or attention), named state_h, state_c, state_image in the export.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from caption_app.data.vocabulary import START_ID, UNK_ID
from caption_app.model.decoders import Decoder, register


def philox_seed(seed_generator: keras.random.SeedGenerator) -> tf.Tensor:
    """The generator's next seed as int32 [2] for TF's stateless ops with alg "philox" (see
    PhiloxDropout: under XLA on CPU, Keras' "auto_select" redoes the key derivation per element);
    folded into int32 as Keras' TensorFlow backend does."""
    return tf.cast(tf.math.floormod(seed_generator.next(), tf.int32.max - 1), tf.int32)


@keras.saving.register_keras_serializable(package="caption_app")
class PhiloxDropout(keras.layers.Dropout):
    """`keras.layers.Dropout` whose keep-mask is drawn with TensorFlow's Philox generator named explicitly.

    The same dropout (an independent Bernoulli keep-mask per element, kept values scaled by
    1 / (1 - rate), identity outside training), arguments and variables (the seed generator's
    state, which checkpoints do not hold) as Keras' layer. Keras draws with alg "auto_select",
    and XLA on CPU fuses that algorithm's seed -> key/counter derivation
    (StatelessRandomGetKeyCounter, ~120 scalar ops) into the per-element loop, so every element
    recomputes it: about 14x the time of a [4960, 512] forward+backward step without dropout
    (bench/dropout_rng.py). Named "philox" (what auto_select picks on CPU and GPU), the key is
    derived once per call: 1.15x.
    """

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        seed = philox_seed(self.seed_generator)
        noise_shape = None
        if self.noise_shape is not None:
            shape = tf.shape(inputs)
            noise_shape = [shape[i] if n is None else n for i, n in enumerate(self.noise_shape)]
        return tf.nn.experimental.stateless_dropout(inputs, self.rate, seed=seed, rng_alg="philox",
                                                    noise_shape=noise_shape)


@register("lstm")
@keras.saving.register_keras_serializable(package="caption_app")
class LSTMDecoder(Decoder):
    """Word embedding + LSTM + logits, with the image embedding as the first input.

    Args:
      vocab_size: ids, special tokens included.
      embedding_size: word (and image) embedding width E.
      lstm_units: H.
      dropout: on the LSTM's inputs and outputs (im2txt: keep 0.7 -> 0.3).
      init_scale: uniform initializer range.
      use_cudnn: passed to keras.layers.LSTM (False keeps XLA on GPU).
      image_every_step: also feed the image embedding with every word (the
        LSTM's input is [word; image], E wide each); the decoding state then
        carries the image: [h, c, image].
      image_logits: add a linear map of the image embedding to the logits
        (deep output: W_h h + W_v v + b); the state carries the image as above.
      word_dropout: in training, each input word (not <start> or padding) is
        replaced by <unk> with this probability, so that a word's prediction
        cannot always lean on the words before it (the targets are kept).
      attention_size: A > 0: the image input is [embedding (E); L cells x A]
        and each step's LSTM output attends over the cells; the attended
        context adds W_c c to the logits. The state carries the image as above.
      image_first: False: the LSTM's first input is zeros instead of the image
        embedding, so the image reaches the words only through `attention_size`
        (or `image_every_step` / `image_logits`): the LSTM's state cannot tie
        one attribute of an object to another through a pooled image vector.
    """

    def __init__(self, vocab_size: int, embedding_size: int, lstm_units: int, dropout: float = 0.0,
                 init_scale: float = 0.08, use_cudnn: bool = False, image_every_step: bool = False, image_logits: bool = False,
                 attention_size: int = 0, word_dropout: float = 0.0, image_first: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.lstm_units = lstm_units
        self.dropout = dropout
        self.init_scale = init_scale
        self.use_cudnn = use_cudnn
        self.image_every_step = image_every_step
        self.image_logits = image_logits
        self.attention_size = attention_size
        self.word_dropout = word_dropout
        self.image_first = image_first
        self.seed_generator = keras.random.SeedGenerator(0) if word_dropout else None
        init = keras.initializers.RandomUniform(-init_scale, init_scale)
        self.word_embedding = keras.layers.Embedding(vocab_size, embedding_size, embeddings_initializer=init,
                                                     name="word_embedding")
        self.lstm = keras.layers.LSTM(lstm_units, return_sequences=True, kernel_initializer=init,
                                      recurrent_initializer=init, use_cudnn=use_cudnn, name="lstm")
        # PhiloxDropout: keras.layers.Dropout's meaning, without its cost under XLA on CPU.
        self.input_dropout = PhiloxDropout(dropout, name="input_dropout")
        self.output_dropout = PhiloxDropout(dropout, name="output_dropout")
        # float32 logits under mixed precision: the softmax over the vocabulary needs the range.
        self.logits = keras.layers.Dense(vocab_size, kernel_initializer=init, name="logits", dtype="float32")
        self.image_to_logits = None
        if image_logits:
            self.image_to_logits = keras.layers.Dense(vocab_size, use_bias=False, kernel_initializer=init,
                                                      name="image_logits", dtype="float32")
        self.attention_query = self.context_to_logits = None
        if attention_size:
            self.attention_query = keras.layers.Dense(attention_size, use_bias=False, kernel_initializer=init,
                                                      name="attention_query")
            self.context_to_logits = keras.layers.Dense(vocab_size, use_bias=False, kernel_initializer=init,
                                                        name="context_logits", dtype="float32")

    @property
    def carries_image(self) -> bool:
        """Whether the decoding state carries the image input ([h, c, image])."""
        return self.image_every_step or self.image_logits or bool(self.attention_size)

    def drop_words(self, ids):
        """ids [...] int -> the same with each word (not padding or <start>) -> <unk> at `word_dropout`."""
        uniform = tf.random.stateless_uniform(tf.shape(ids), philox_seed(self.seed_generator), alg="philox")
        drop = uniform < self.word_dropout
        return ops.where(ops.logical_and(drop, ids > START_ID), UNK_ID, ids)

    def _split_image(self, image_input):
        """The encoder's output [N, E (+ L*A)] -> (embedding [N, E], cells [N, L, A] or None)."""
        if not self.attention_size:
            return image_input, None
        cells = image_input[:, self.embedding_size:]
        return image_input[:, :self.embedding_size], ops.reshape(cells, (ops.shape(cells)[0], -1, self.attention_size))

    def _attend(self, outputs, cells):
        """outputs [N, T, H], cells [N, L, A] -> the logits' context term [N, T, V]."""
        return self._attend_with_weights(outputs, cells)[0]

    def _attend_with_weights(self, outputs, cells):
        """outputs [N, T, H], cells [N, L, A] -> (the logits' context term [N, T, V], weights [N, T, L])."""
        query = self.attention_query(outputs)  # [N, T, A]
        scores = ops.einsum("nta,nla->ntl", query, ops.cast(cells, query.dtype)) / float(self.attention_size) ** 0.5
        weights = ops.softmax(scores, axis=-1)
        context = ops.einsum("ntl,nla->nta", weights, ops.cast(cells, weights.dtype))  # [N, T, A]
        return self.context_to_logits(context), weights

    def build(self, image_embedding_shape, input_ids_shape=None):
        self.image_width = int(image_embedding_shape[-1])  # E, or E + L*A with attention
        cells_width = self.image_width - self.embedding_size
        if (cells_width != 0) if not self.attention_size else (cells_width <= 0 or cells_width % self.attention_size):
            raise ValueError(f"image input width {self.image_width} does not fit embedding_size "
                             f"{self.embedding_size} and attention_size {self.attention_size}")
        self.word_embedding.build((None, None))
        self.lstm.build((None, None, self.embedding_size * (2 if self.image_every_step else 1)))
        self.logits.build((None, None, self.lstm_units))
        if self.image_to_logits is not None:
            self.image_to_logits.build((None, self.embedding_size))
        if self.attention_size:
            self.attention_query.build((None, None, self.lstm_units))
            self.context_to_logits.build((None, None, self.attention_size))

    def call(self, image_embedding, input_ids, training=None):
        """image_embedding [B, E] (with attention [B, E + L*A]), input_ids [B, C, T] int
        -> logits [B, C, T, V]."""
        batch, num_captions, length = ops.shape(input_ids)
        image_embedding, cells = self._split_image(image_embedding)
        image = ops.broadcast_to(image_embedding[:, None, :], (batch, num_captions, self.embedding_size))
        image = ops.reshape(image, (-1, 1, self.embedding_size))  # [B*C, 1, E]
        ids = ops.reshape(input_ids, (-1, length))
        if training and self.word_dropout:
            ids = self.drop_words(ids)
        words = self.word_embedding(ids)  # [B*C, T, E]
        first = image if self.image_first else ops.zeros_like(image)
        sequence = ops.concatenate([first, words], axis=1)  # [B*C, T+1, E]
        if self.image_every_step:
            sequence = ops.concatenate([sequence, ops.broadcast_to(image, ops.shape(sequence))], axis=-1)  # 2E
        sequence = self.input_dropout(sequence, training=training)
        outputs = self.lstm(sequence, training=training)[:, 1:]  # the image step predicts nothing
        outputs = self.output_dropout(outputs, training=training)
        logits = self.logits(outputs)  # [B*C, T, V]
        if self.image_to_logits is not None:
            logits = logits + self.image_to_logits(image)  # [B*C, 1, V], the same for every step
        if cells is not None:  # an image's C captions attend over its cells, not over C copies of them
            per_image = ops.reshape(outputs, (batch, num_captions * length, self.lstm_units))
            logits = logits + ops.reshape(self._attend(per_image, cells), (-1, length, self.vocab_size))
        return ops.reshape(logits, (batch, num_captions, length, self.vocab_size))

    def initial_state(self, image_input):
        """image_input [N, E] (with attention [N, E + L*A]) -> the state after the image step:
        LSTM [h, c], each [N, H] (and the image input with `image_every_step`, `image_logits`
        or attention)."""
        image_embedding, _ = self._split_image(image_input)
        zeros = ops.zeros((ops.shape(image_embedding)[0], self.lstm_units), dtype=image_embedding.dtype)
        first = image_embedding if self.image_first else ops.zeros_like(image_embedding)
        if self.image_every_step:
            first = ops.concatenate([first, image_embedding], axis=-1)
        _, state = self.lstm.cell(first, [zeros, zeros], training=False)
        return list(state) + ([image_input] if self.carries_image else [])

    @classmethod
    def from_config_model(cls, model, vocab_size: int, **kwargs) -> "LSTMDecoder":
        return cls(vocab_size, model.embedding_size, model.lstm_units, model.lstm_dropout, model.init_scale,
                   model.use_cudnn, image_every_step=model.image_every_step, image_logits=model.image_logits,
                   attention_size=model.attention_size, word_dropout=model.word_dropout,
                   image_first=model.image_first, **kwargs)

    @classmethod
    def fingerprint(cls, model) -> dict:
        # Only the options that are on, so that run dirs written before an option existed keep their fingerprint.
        return {"lstm_units": model.lstm_units,
                **({"image_every_step": True} if model.image_every_step else {}),
                **({"image_logits": True} if model.image_logits else {}),
                **({"attention_size": model.attention_size} if model.attention_size else {}),
                **({"image_first": False} if not model.image_first else {})}

    def state_sizes(self) -> dict[str, int]:
        """state_h, state_c [N, H] (and state_image [N, E (+ L*A)] when a step reads the image)."""
        sizes = {"state_h": self.lstm_units, "state_c": self.lstm_units}
        if self.carries_image:
            sizes["state_image"] = self.image_width
        return sizes

    @property
    def attends(self) -> bool:
        return bool(self.attention_size)

    def step(self, ids, state):
        """ids [N] int, state (see `initial_state`) -> (logits [N, V], new state)."""
        return self._step(ids, state)[:2]

    def step_with_attention(self, ids, state):
        """`step`, and the weights [N, L] its logits' context term attended with."""
        if not self.attention_size:
            return super().step_with_attention(ids, state)
        return self._step(ids, state, with_weights=True)

    def _step(self, ids, state, with_weights=False):
        """(logits [N, V], new state) (+ the attention weights [N, L] with `with_weights`)."""
        words = self.word_embedding(ids)  # [N, E]
        image_embedding, cells = (None, None) if not self.carries_image else self._split_image(state[2])
        if self.image_every_step:
            words = ops.concatenate([words, image_embedding], axis=-1)
        output, new_state = self.lstm.cell(words, list(state[:2]), training=False)
        logits = self.logits(output)
        if self.image_to_logits is not None:
            logits = logits + self.image_to_logits(image_embedding)
        weights = None
        if cells is not None:
            term, weights = self._attend_with_weights(output[:, None], cells)
            logits = logits + term[:, 0]
        new_state = list(new_state) + list(state[2:])
        return (logits, new_state, weights[:, 0]) if with_weights else (logits, new_state)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "embedding_size": self.embedding_size,
                "lstm_units": self.lstm_units, "dropout": self.dropout, "init_scale": self.init_scale,
                "use_cudnn": self.use_cudnn, "image_every_step": self.image_every_step,
                "image_logits": self.image_logits, "attention_size": self.attention_size,
                "word_dropout": self.word_dropout, "image_first": self.image_first}

