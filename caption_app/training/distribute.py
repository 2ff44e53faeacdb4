"""Distribution strategies and mixed-precision settings of a training run.

    train.strategy   default | mirrored | multi_worker | tpu
    train.precision  float32 | mixed_float16 | mixed_bfloat16

`make_strategy` builds the `tf.distribute` strategy; it must run before any
other TensorFlow op (MultiWorkerMirroredStrategy configures the collectives
at startup). `train.batch_size` is the GLOBAL batch: each of the N replicas
gets batch_size / N images per step.

XLA across replicas. Keras compiles its whole train function (which wraps
`strategy.run`) with XLA when `jit_compile=True` (`compile_for_fit`). With more than one replica
that fails in TF 2.21 / Keras 3.15: XLA cannot compile a function that reads
variables on several devices (MirroredStrategy: "Trying to access resource
... located in device CPU:1 from device CPU:0") nor the collective ops of
MultiWorkerMirroredStrategy ("No registered 'CollectiveGatherV2' OpKernel
for XLA_CPU_JIT"). `ReplicaTrainer` keeps XLA on by compiling each
replica's forward and backward pass (the step's cost) with XLA and doing the
all-reduce and the optimizer update outside it. It also works around two
Keras 3.15 bugs with MultiWorkerMirroredStrategy and `fit` (dict inputs,
keras-team/keras#20329; scalar logs, tensorflow/tensorflow#72388).
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from caption_app.config import Config
from caption_app.model.loss import MaskedCrossEntropy, token_loss
from caption_app.errors import CaptionAppError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


class StrategyError(CaptionAppError, ValueError):
    """A strategy that cannot be built here (unknown name, bad TF_CONFIG, no TPU)."""


def check_settings(strategy: str, precision: str) -> None:
    """Raises ValueError naming the choices for an unknown strategy or precision."""
    _check_strategy(strategy)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown train.precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")


def _check_strategy(name: str) -> None:
    if name not in STRATEGIES:
        raise StrategyError(f"unknown train.strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")


def _tf_config() -> dict:
    """The parsed, checked TF_CONFIG of a multi-worker job."""
    text = os.environ.get("TF_CONFIG")
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text:
        raise StrategyError("train.strategy=multi_worker needs the TF_CONFIG environment variable on every "
                            f"worker, e.g. {example} (index 1 on the second host); see README 'Scaling out'")
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as err:
        raise StrategyError(f"TF_CONFIG is not valid JSON ({err}); expected e.g. {example}") from None
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise StrategyError(f"TF_CONFIG needs a \"cluster\" and a \"task\" with \"type\" and \"index\"; got {text!r}. "
                            f"Expected e.g. {example}")
    members = cluster.get(task["type"])
    if not isinstance(members, list) or not 0 <= int(task["index"]) < len(members):
        raise StrategyError(f"TF_CONFIG task {task} is not in its cluster {cluster}")
    return tf_config


def make_strategy(name: str, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """The tf.distribute strategy `name` (call it before any other TensorFlow op).

    Args:
      name: default (one device), mirrored (all local GPUs, or `devices`),
        multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG), tpu
        (TPUStrategy through TPUClusterResolver; TPU_NAME or a Cloud TPU VM).
      devices: mirrored only: the devices to use, e.g. ["/gpu:0", "/gpu:1"].
    """
    _check_strategy(name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        _tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        raise StrategyError(f"train.strategy=tpu but no TPU was found ({type(err).__name__}: {err}). Run on a "
                            "Cloud TPU VM or set TPU_NAME; use train.strategy=default or mirrored elsewhere") from None
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run dir (always, except on non-chief workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and
                                             "chief" not in resolver.cluster_spec().as_dict())


def num_workers(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return len(spec.get("worker", [])) + len(spec.get("chief", []))


def needs_replica_trainer(strategy: tf.distribute.Strategy) -> bool:
    """More than one replica (or worker) outside a TPU: Keras' whole-step XLA cannot compile it."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return False
    return strategy.num_replicas_in_sync > 1 or num_workers(strategy) > 1


class FitModel(keras.Model):
    """What `fit` runs: `model`'s call, compiled with the phase's optimizer, owning no variables.

    The captioning model itself is never compiled, so it never owns an
    optimizer: its checkpoints hold no `model/optimizer` entry for
    tf.train's deferred restoration to pour into the next phase's optimizer
    (restoring a phase-1 checkpoint and compiling phase 2 otherwise loads
    phase 1's Adam slots into phase 2's optimizer, or fails on their shapes
    once the backbone is trainable). Each phase's optimizer is checkpointed
    under its own name by the trainer.
    """

    def __init__(self, model: keras.Model, **kwargs):
        super().__init__(name=kwargs.pop("name", f"{model.name}_fit"), **kwargs)
        self.inner = model

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)


class ReplicaTrainer(FitModel):
    """Trains `model` under a multi-replica strategy with XLA on inside each replica.

    Per step and replica: forward + masked cross-entropy + backward run in one
    XLA-compiled function (`per_replica_jit_compile`); then, outside XLA, the
    gradients, the sum of token losses and the token count are all-reduced,
    the gradients are divided by the global token count (so the loss is the
    mean over the real tokens of the GLOBAL batch, exactly as on one device),
    clipped to the optimizer's `global_clipnorm` (Keras clips each replica's
    share before its own all-reduce, which is not the global norm), and
    handed to the optimizer divided by the number of replicas (its own
    all-reduce sums them back). That costs a second all-reduce of the
    gradients per step.

    Use it in place of the model for `compile` and `fit` only; checkpoints and
    inference keep using `model` itself (this wrapper owns no variables).
    Build it and call `fit` inside `strategy.scope()`, but construct it
    outside: a Keras model created inside a MultiWorkerMirroredStrategy scope
    trips keras-team/keras#20329 on dict inputs.
    """

    def __init__(self, model: keras.Model, *, clip_norm: float = 0.0, multi_worker: bool = False,
                 jit_compile: bool = True, label_smoothing: float = 0.0, **kwargs):
        super().__init__(model, name=f"{model.name}_replica_trainer", **kwargs)
        self.clip_norm = clip_norm
        self.label_smoothing = label_smoothing
        self.multi_worker = multi_worker
        self.per_replica_jit_compile = jit_compile
        self._grads_fn = tf.function(self._loss_and_gradients, jit_compile=jit_compile, reduce_retracing=True)

    def compile(self, **kwargs):
        """keras.Model.compile, plus the loss tracker (created here, inside strategy.scope())."""
        super().compile(**kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        # The global batch's mean token loss, averaged over the epoch's steps (as Keras' own "loss").
        return [self.loss_tracker] if getattr(self, "loss_tracker", None) is not None else []

    def _loss_and_gradients(self, inputs, targets, loss_scale):
        """One replica's (sum of token losses, token count, d(sum loss * loss_scale)/d weights), in XLA."""
        with tf.GradientTape() as tape:
            logits = self.inner(inputs, training=True)  # [b, C, T, V] float32
            nll, mask = token_loss(targets, logits, self.label_smoothing)
            nll_sum = tf.reduce_sum(nll)
            scaled = nll_sum * loss_scale
        grads = tape.gradient(scaled, self.inner.trainable_variables)
        # Dense gradients (the word embedding's would be IndexedSlices): all-reduce-friendly.
        grads = [tf.convert_to_tensor(g) if g is not None else tf.zeros_like(v)
                 for g, v in zip(grads, self.inner.trainable_variables)]
        return nll_sum, tf.reduce_sum(mask), grads

    def train_step(self, data):
        inputs, targets = data[0], data[1]
        optimizer = self.optimizer
        loss_scale = current_loss_scale(optimizer)
        nll_sum, tokens, grads = self._grads_fn(inputs, targets, loss_scale)
        nll_sum, tokens = apply_global_mean(optimizer, self.inner.trainable_variables, grads, nll_sum, tokens,
                                            loss_scale=loss_scale, clip_norm=self.clip_norm)
        # The global batch's loss, the same on every replica.
        self.loss_tracker.update_state(nll_sum / tokens)
        logs = {"loss": self.loss_tracker.result()}
        if self.multi_worker:
            # Keras reduces each log with strategy.reduce(MEAN, axis=0) across workers,
            # which needs a batch axis (tensorflow/tensorflow#72388).
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs


def current_loss_scale(optimizer) -> tf.Tensor:
    """The loss scale of a LossScaleOptimizer (mixed_float16), else 1."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return tf.cast(optimizer.dynamic_scale, tf.float32)
    return tf.constant(1.0)


def apply_global_mean(optimizer, variables, grads, loss_sum, count, *, loss_scale, clip_norm: float):
    """Applies the gradient of the global batch's mean loss, from one replica's sums (in a replica context).

    Args:
      grads: this replica's d(its loss sum * loss_scale)/d variables (dense).
      loss_sum, count: this replica's loss sum and the number of things it sums over (tokens, samples).
    Returns:
      (the global loss sum, the global count >= 1), the same on every replica.

    The sums and the gradients are all-reduced, the gradients divided by the
    global count (the mean over the GLOBAL batch, exactly as on one device),
    clipped to `clip_norm` by their global norm (Keras clips each replica's
    share before its own all-reduce, which is not the global norm) and handed
    to the optimizer divided by the number of replicas (its own all-reduce
    sums them back).
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    loss_sum, count = context.all_reduce("sum", [loss_sum, count])
    count = tf.maximum(count, 1.0)
    grads = context.all_reduce("sum", grads)
    grads = [g / count for g in grads]  # d(mean loss)/dw * loss_scale
    if clip_norm > 0:
        unscaled = [g / loss_scale for g in grads]
        unscaled, _ = tf.clip_by_global_norm(unscaled, clip_norm)
        grads = [g * loss_scale for g in unscaled]
    optimizer.apply_gradients(zip([g / replicas for g in grads], variables))
    return loss_sum, count


def shard_policy(strategy: tf.distribute.Strategy, num_files: int) -> tf.data.experimental.AutoShardPolicy:
    """Each worker reads its own record files when there are enough; else every worker reads all
    and keeps its share of each global batch (the same batches as one worker would see)."""
    workers = num_workers(strategy)
    if workers > 1 and num_files >= workers:
        return tf.data.experimental.AutoShardPolicy.FILE
    return tf.data.experimental.AutoShardPolicy.DATA


def compile_for_fit(model: keras.Model, optimizer, config: Config, strategy: tf.distribute.Strategy) -> keras.Model:
    """Compiles what `fit` runs over `model` (a FitModel, or a ReplicaTrainer for several
    replicas) and returns it; `model` itself stays uncompiled (see FitModel).

    XLA stays on in every configuration: one replica (and TPU) compile the
    whole step (`jit_compile`, checked: Keras drops it silently for an LSTM
    that may use cuDNN); several replicas compile each replica's forward and
    backward pass (see this module's docstring for why).
    """
    t = config.train
    if needs_replica_trainer(strategy):
        trainer = ReplicaTrainer(model, clip_norm=t.clip_gradient_norm, multi_worker=num_workers(strategy) > 1,
                                 jit_compile=t.jit_compile, label_smoothing=t.label_smoothing)
        with strategy.scope():
            trainer.compile(optimizer=optimizer, loss=MaskedCrossEntropy(t.label_smoothing), jit_compile=False)
        return trainer
    fit_model = FitModel(model)
    with strategy.scope():
        fit_model.compile(optimizer=optimizer, loss=MaskedCrossEntropy(t.label_smoothing), jit_compile=t.jit_compile)
    if t.jit_compile and not fit_model.jit_compile:
        raise RuntimeError("Keras turned XLA off for this model (an LSTM that may use cuDNN?); "
                           "keep model.use_cudnn=false with train.jit_compile=true")
    return fit_model


def xla_description(fit_model: keras.Model) -> str:
    """How `compile_for_fit`'s result runs XLA: "on", "on (per replica)" or "off"."""
    if isinstance(fit_model, ReplicaTrainer):
        return "on (per replica)" if fit_model.per_replica_jit_compile else "off"
    return "on" if fit_model.jit_compile else "off"
