"""The adversarial trainer: a ``keras.Model`` whose ``train_step`` runs the
inner attack, refines labels and updates the weights.

The trainer composes two objects: a training attack (``sglr_keras.attacks.training``)
and an objective (``sglr_keras.training.objectives``). It knows no method by
name; ``training/recipe.py`` maps a config to the pair. The wrapped ``classifier``
is an ordinary functional Keras model: what checkpoints and exports hold.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from sglr_keras.models.fused_batchnorm import use_fused_batch_norm
from sglr_keras.training.objectives import CONSTANT_CLEAN, NO_CLEAN, TRAINED_CLEAN, Objective

# Per-example seeds mix the step and the run seed with a prime stride, so that
# (step, seed) pairs of nearby runs never collide.
STEP_STRIDE = 1_000_003


class _EpochCounter:
    """The epoch a numpy-fed ``fit`` is in, read by its input pipeline (kept out
    of Keras's tracking, so checkpoints do not change)."""

    def __init__(self):
        with tf.init_scope():
            self.value = tf.Variable(0, dtype=tf.int64, trainable=False)


class AdversarialTrainer(keras.Model):
    """Adversarial training around any Keras classifier that maps images in
    [0, 1] to logits: ``attack`` makes the training inputs, ``objective`` (PGD-AT,
    SGLR, TRADES, ...) turns labels and logits into the loss. Train it with
    Keras's own ``compile``/``fit``; ``trainer.classifier`` stays the plain model.

    ``fit`` takes numpy arrays (ids attached, order seeded per epoch) or a
    ``tf.data.Dataset`` of ``(x, y, id)`` batches (see :func:`with_example_ids`;
    ``(x, y)`` batches are enough for objectives without a soft-label table).
    ``weight_decay`` is coupled L2 as in PyTorch's SGD; ``seed`` seeds the
    per-example random starts and the numpy path's order. ``fused_batch_norm``
    runs the classifier's Keras batch-norm layers with TensorFlow's fused kernels
    (:func:`use_fused_batch_norm`: the same results within float32 rounding, and
    faster, bfloat16 most); pass False to keep Keras's own ops.

    >>> import keras, numpy as np
    >>> from sglr_keras import SGLR, AdversarialTrainer, TrainingPGD
    >>> x, y = np.random.rand(64, 8, 8, 1).astype("float32"), np.arange(64) % 4
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    >>> trainer = AdversarialTrainer(model, attack=TrainingPGD(eps=0.1, step_size=0.025, steps=2),
    ...                              objective=SGLR(4, y, warmup_epochs=1), weight_decay=5e-4)
    >>> trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    >>> history = trainer.fit(x, y, batch_size=32, epochs=2, verbose=0)
    >>> bool((trainer.soft_label_table.numpy_rows().max(axis=1) < 1).any())
    True
    """

    def __init__(self, classifier: keras.Model, attack=None, objective: Objective | None = None,
                 weight_decay: float = 0.0, seed: int = 0, fused_batch_norm: bool = True):
        super().__init__(name="adversarial_trainer")
        if fused_batch_norm:
            use_fused_batch_norm(classifier)
        if attack is None:
            from sglr_keras.attacks.training import TrainingPGD

            attack = TrainingPGD(8 / 255, 2 / 255, 10)
        if objective is None:
            objective = Objective(int(classifier.output_shape[-1]))
        self.classifier = classifier
        self.attack = attack
        self.objective = objective
        self._epoch_counter = _EpochCounter()
        self.weight_decay = weight_decay
        self.seed = seed
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="acc")
        self.grad_norm_tracker = keras.metrics.Mean(name="grad_norm")
        # Steps whose (loss-scaled float16) gradients were not finite: skipped, not applied.
        self.skipped_tracker = keras.metrics.Sum(name="skipped_steps")
        self.built = True

    @property
    def soft_label_table(self):
        return self.objective.soft_label_table

    @property
    def loss_scaling(self) -> bool:
        return isinstance(getattr(self, "optimizer", None), keras.optimizers.LossScaleOptimizer)

    @property
    def metrics(self):
        trackers = [self.loss_tracker, self.accuracy_tracker, self.grad_norm_tracker]
        return trackers + [self.skipped_tracker] if self.loss_scaling else trackers

    def call(self, inputs, training=False):
        return self.classifier(inputs, training=training)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras's pre-build pulls a batch and reduces it across replicas, which
        # MultiWorkerMirroredStrategy refuses for a (x, y, indices) tuple. Nothing
        # here needs it: the classifier and the table are built in __init__, so
        # only the optimiser's slots are left to create.
        with self.distribute_strategy.scope():
            if not self.optimizer.built:
                self.optimizer.build(self.classifier.trainable_variables)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, callbacks=None, shuffle=True, **kwargs):
        """``keras.Model.fit``, with the epoch schedule of the objective (SGLR's
        warm-up) always attached: a plain ``fit`` refines labels when it should.
        Numpy ``x, y`` get example ids and a per-epoch seeded order here."""
        callbacks = list(callbacks or [])
        if not any(isinstance(c, ObjectiveSchedule) for c in callbacks):
            callbacks.insert(0, ObjectiveSchedule())
        if x is not None and not isinstance(x, tf.data.Dataset):
            if y is None:
                raise ValueError("AdversarialTrainer.fit: give labels y with the images x (or a tf.data.Dataset)")
            if len(x) != len(y):
                raise ValueError(f"AdversarialTrainer.fit: {len(x)} images but {len(y)} labels")
            self._check_table_size(len(y))
            from sglr_keras.data.example_ids import epoch_shuffled_batches

            x = epoch_shuffled_batches(x, y, batch_size or 32, self.seed, self._epoch_counter.value, shuffle)
            y = None
        elif isinstance(x, tf.data.Dataset):
            x = self._with_ids(x)
        self._build_classifier(x)
        # A dataset is never shuffled by Keras (ours is, by seed and epoch).
        return super().fit(x, y, epochs=epochs, callbacks=callbacks, shuffle=False, **kwargs)

    def save(self, filepath, overwrite=True, **kwargs):
        """Save the classifier (a plain Keras model any Keras loads, serves or
        exports), so ``keras.callbacks.ModelCheckpoint("best.keras", ...)`` keeps
        the network, not the training wrapper. The training state (optimizer,
        soft-label table) is what ``save_weights`` and ``BackupAndRestore`` keep."""
        return self.classifier.save(filepath, overwrite=overwrite, **kwargs)

    def export(self, filepath, **kwargs):
        """``keras.Model.export`` of the classifier (a SavedModel of the network)."""
        return self.classifier.export(filepath, **kwargs)

    def _build_classifier(self, dataset) -> None:
        """A subclassed classifier has no weights until called; the optimizer must
        see them before its first step."""
        if self.classifier.built and self.classifier.trainable_variables:
            return
        image_spec = dataset.element_spec[0]
        shape = [1 if d is None else d for d in image_spec.shape[1:]] if image_spec.shape.rank else []
        self.classifier(tf.zeros([1, *shape], image_spec.dtype))

    def _check_table_size(self, count: int) -> None:
        table = self.soft_label_table
        if table is not None and int(table.rows.shape[0]) != count:
            raise ValueError(f"AdversarialTrainer.fit: the soft-label table has {int(table.rows.shape[0])} rows "
                             f"but fit got {count} examples; build the objective with these training labels")

    def _with_ids(self, dataset):
        spec = dataset.element_spec
        if isinstance(spec, tuple) and len(spec) == 3:
            return dataset
        if isinstance(spec, tuple) and len(spec) == 2:
            if self.soft_label_table is not None:
                raise ValueError("AdversarialTrainer.fit: the objective keeps a soft-label row per example, so each "
                                 "batch needs its examples' ids: build the dataset as "
                                 "with_example_ids(tf.data.Dataset.from_tensor_slices((x, y))) and shuffle and "
                                 "batch after that")
            # No table: ids only seed the random starts, positions in the batch do.
            return dataset.map(lambda x, y: (x, y, tf.range(tf.shape(y)[0], dtype=tf.int32)))
        raise ValueError(f"AdversarialTrainer.fit: dataset elements must be (x, y) or (x, y, id), got {spec}")

    def set_epoch(self, epoch: int) -> None:
        """Tell the objective that (0-based) ``epoch`` starts. When its step changes
        (SGLR leaving warm-up) the train function is retraced once, so warm-up
        epochs pay nothing for the refinement."""
        self._epoch_counter.value.assign(epoch)
        if self.objective.set_epoch(epoch):
            self.train_function = None
            self.make_train_function(force=True)

    # --- the step -------------------------------------------------------------

    def train_step(self, data):
        x, y, indices = data
        y = tf.cast(y, tf.int32)
        x_adv = self.attack.perturb(self.classifier, x, y, self.example_seeds(indices))
        with tf.GradientTape() as tape:
            logits_adv, logits_clean = self.forward(x, x_adv)
            rows = self.objective.refine(indices, y, logits_clean, logits_adv)
            targets = self.objective.targets(y, rows)
            loss = self.objective.loss(targets, logits_adv, logits_clean)
            # Keras sums gradients over replicas, so each replica contributes 1/R of the mean.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.scale_loss(loss / replicas)
        self.store_refined_rows(indices, rows)
        variables = self.classifier.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.apply_with_weight_decay(gradients, variables, replicas)
        return self.update_metrics(loss, y, logits_adv, gradients, replicas)

    def scale_loss(self, loss):
        """The loss times the dynamic loss scale under float16 (else unchanged)."""
        return self.optimizer.scale_loss(loss) if self.loss_scaling else loss

    def loss_scale(self):
        return tf.cast(self.optimizer.scale_loss(1.0), tf.float32) if self.loss_scaling else 1.0

    def example_seeds(self, indices):
        """One stateless seed per example from (run seed, step, example index): a
        resumed run and any replica layout draw the same random start."""
        step = tf.cast(self.optimizer.iterations, tf.int64)
        return tf.stack([tf.fill(tf.shape(indices), step * STEP_STRIDE + self.seed),
                         tf.cast(indices, tf.int64)], axis=1)

    def forward(self, x, x_adv):
        """(adversarial logits, clean logits or None), in the reference code's order:
        TRADES's natural forward before the adversarial one; SGLR's constant clean
        forward after it (in training mode by default, which also moves batch-norm
        statistics, as the reference does)."""
        kind = self.objective.clean_forward
        if kind == TRAINED_CLEAN:
            logits_clean = self.classifier(x, training=True)
            return self.classifier(x_adv, training=True), logits_clean
        logits_adv = self.classifier(x_adv, training=True)
        if kind == NO_CLEAN:
            return logits_adv, None
        if kind != CONSTANT_CLEAN:
            raise ValueError(f"unknown clean_forward {kind!r} of objective {self.objective.name!r}")
        training = getattr(self.objective, "clean_forward_training", True)
        return logits_adv, tf.stop_gradient(self.classifier(x, training=training))

    def store_refined_rows(self, indices, rows):
        """Write SGLR's new rows into the soft-label table (replica-consistent)."""
        if rows is not None:
            self.objective.soft_label_table.assign_rows(indices, rows)

    def apply_with_weight_decay(self, gradients, variables, replicas):
        """SGD with L2 added to the gradient, as PyTorch's ``weight_decay`` does
        (Keras's own ``weight_decay`` is decoupled, which differs under momentum).
        Each replica adds 1/R of it, since the replicas' gradients are summed."""
        if self.weight_decay:
            # Under loss scaling the gradients are scaled; so is the decay term, so
            # that the optimizer's unscaling leaves plain L2.
            decay = (self.weight_decay / replicas) * self.loss_scale()
            gradients = [g + tf.cast(decay, g.dtype) * tf.cast(v, g.dtype) for g, v in zip(gradients, variables)]
        # A LossScaleOptimizer checks the gradients: non-finite ones are skipped
        # (and the scale halved), finite ones unscaled and applied.
        self.optimizer.apply(gradients, variables)

    def update_metrics(self, loss, y, logits_adv, gradients, replicas):
        """Running means for the epoch; the gradient norm is that of this replica's
        mean loss (the scaled gradients times R)."""
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(y, logits_adv)
        norm = tf.linalg.global_norm(gradients) * tf.cast(replicas, tf.float32) / self.loss_scale()
        if self.loss_scaling:
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
            self.skipped_tracker.update_state(1.0 - tf.cast(finite, tf.float32))
            # The norm of a skipped step is not a number worth averaging in.
            self.grad_norm_tracker.update_state(tf.where(finite, norm, 0.0), sample_weight=tf.cast(finite, tf.float32))
        else:
            self.grad_norm_tracker.update_state(norm)
        # Shape (1,), not a scalar: under MultiWorkerMirroredStrategy Keras averages
        # step outputs over axis 0, which a scalar does not have.
        return {m.name: tf.reshape(m.result(), [1]) for m in self.metrics}


class ObjectiveSchedule(keras.callbacks.Callback):
    """Tells the trainer's objective each epoch as it starts (SGLR's warm-up).
    ``AdversarialTrainer.fit`` attaches it; nothing else has to."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.set_epoch(epoch)
