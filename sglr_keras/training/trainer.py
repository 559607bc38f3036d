"""The adversarial trainer: a ``keras.Model`` whose ``train_step`` runs the
inner attack, refines labels and updates the weights.

The wrapped ``classifier`` is an ordinary functional Keras model; it is what
checkpoints and exports hold. The trainer adds the soft-label table, the
metric trackers and the method's loss.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from sglr_keras import sglr
from sglr_keras.attacks.pgd import ascend
from sglr_keras.attacks.losses import cross_entropy
from sglr_keras.config import SGLR_METHODS, TrainConfig
from sglr_keras.training import objectives

# TRADES starts its attack from x + 0.001 * N(0, I) (Zhang et al. 2019, Alg. 1).
TRADES_INIT_STD = 0.001


class AdversarialTrainer(keras.Model):
    def __init__(self, classifier: keras.Model, config: TrainConfig, train_labels, num_classes: int):
        super().__init__(name="adversarial_trainer")
        self.classifier = classifier
        self.method = config.method
        self.attack_config = config.attack
        self.sglr_config = config.sglr
        self.trades_beta = config.trades_beta
        self.label_smoothing = config.label_smoothing
        self.weight_decay = config.optimizer.weight_decay
        self.seed = config.seed
        self.num_classes = int(num_classes)
        self.soft_label_table = (
            sglr.SoftLabelTable(train_labels, num_classes, dtype=config.sglr.table_dtype)
            if self.method in SGLR_METHODS else None
        )
        # Read when train_step is traced; flipping it rebuilds the train function
        # (see set_epoch), so warm-up epochs pay nothing for the refinement.
        self.refinement_active = self.method in SGLR_METHODS and config.sglr.warmup_epochs == 0
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="acc")
        self.grad_norm_tracker = keras.metrics.Mean(name="grad_norm")
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, self.grad_norm_tracker]

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

    def set_epoch(self, epoch: int) -> None:
        """Switch from warm-up (hard labels, table untouched) to refinement."""
        active = self.method in SGLR_METHODS and epoch >= self.sglr_config.warmup_epochs
        if active != self.refinement_active:
            self.refinement_active = active
            self.train_function = None
            self.make_train_function(force=True)

    # --- the step -------------------------------------------------------------

    def train_step(self, data):
        x, y, indices = data
        y = tf.cast(y, tf.int32)
        x_adv = self.adversarial_examples(x, y, indices)
        logits_clean_fixed = self.clean_logits_for_refinement(x)
        with tf.GradientTape() as tape:
            loss, logits_adv = self.method_loss(x, x_adv, y, indices, logits_clean_fixed)
            # Keras sums gradients over replicas, so each replica contributes 1/R of the mean.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = loss / replicas
        variables = self.classifier.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.apply_with_weight_decay(gradients, variables, replicas)
        return self.update_metrics(loss, y, logits_adv, gradients, replicas)

    def example_noise(self, x, indices, distribution):
        """Noise for each example seeded by (seed, step, example index): a resumed run
        and any replica layout draw the same random start for the same example."""
        step = tf.cast(self.optimizer.iterations, tf.int64)
        seeds = tf.stack([tf.fill(tf.shape(indices), step * 1_000_003 + self.seed),
                          tf.cast(indices, tf.int64)], axis=1)
        shape = tf.shape(x)[1:]
        if distribution == "uniform":
            return tf.vectorized_map(lambda seed: tf.random.stateless_uniform(shape, seed, -1.0, 1.0), seeds)
        return tf.vectorized_map(lambda seed: tf.random.stateless_normal(shape, seed), seeds)

    def adversarial_examples(self, x, y, indices):
        """The inner maximisation, with the network in inference mode."""
        attack = self.attack_config
        if self.method == "standard" or attack.steps == 0:
            return x
        if self.method in ("trades", "trades-sglr"):
            p_clean = tf.stop_gradient(tf.nn.softmax(self.classifier(x, training=False)))
            start = x + TRADES_INIT_STD * self.example_noise(x, indices, "normal")
            kl_to_clean = lambda logits: tf.reduce_sum(
                p_clean * (tf.math.log(p_clean + 1e-12) - tf.nn.log_softmax(logits)), axis=-1)
            return ascend(self.classifier, x, start, kl_to_clean, attack.eps, attack.step_size, attack.steps)
        start = x + attack.eps * self.example_noise(x, indices, "uniform") if attack.random_start else x
        return ascend(self.classifier, x, start, lambda logits: cross_entropy(logits, y),
                      attack.eps, attack.step_size, attack.steps)

    def clean_logits_for_refinement(self, x):
        """SGLR's clean prediction, a constant. The reference code runs this forward
        in training mode, which also moves batch-norm statistics."""
        if self.method != "sglr" or not self.refinement_active:
            return None
        return tf.stop_gradient(self.classifier(x, training=self.sglr_config.clean_forward_training))

    def method_loss(self, x, x_adv, y, indices, logits_clean_fixed):
        """(loss, logits on the adversarial input) for the configured method."""
        if self.method in ("trades", "trades-sglr"):
            logits_clean = self.classifier(x, training=True)
            logits_adv = self.classifier(x_adv, training=True)
            natural_targets = (self.refined_targets(indices, y, logits_clean, logits_adv)
                               if self.method == "trades-sglr" else tf.one_hot(y, self.num_classes))
            return objectives.trades_loss(logits_clean, logits_adv, natural_targets, self.trades_beta), logits_adv
        logits_adv = self.classifier(x_adv, training=True)
        if self.method == "sglr":
            targets = self.refined_targets(indices, y, logits_clean_fixed, logits_adv)
        elif self.method == "label-smoothing":
            targets = objectives.smoothed_labels(y, self.num_classes, self.label_smoothing)
        else:
            targets = tf.one_hot(y, self.num_classes)
        return sglr.soft_cross_entropy(logits_adv, targets), logits_adv

    def refined_targets(self, indices, y, logits_clean, logits_adv):
        """Update the table rows of this batch, then mix them with the hard label
        (the reference code's order: the loss sees the updated row)."""
        if not self.refinement_active:
            return tf.one_hot(y, self.num_classes)
        cfg = self.sglr_config
        prediction = sglr.interpolated_prediction(logits_clean, logits_adv, cfg.lam, cfg.temperature)
        rows = sglr.ema_rows(self.soft_label_table.lookup(indices), prediction, cfg.alpha)
        self.soft_label_table.assign_rows(indices, rows)
        return sglr.soft_target(rows, y, self.num_classes, cfg.r)

    def apply_with_weight_decay(self, gradients, variables, replicas):
        """SGD with L2 added to the gradient, as PyTorch's ``weight_decay`` does
        (Keras's own ``weight_decay`` is decoupled, which differs under momentum).
        Each replica adds 1/R of it, since the replicas' gradients are summed."""
        if self.weight_decay:
            gradients = [g + (self.weight_decay / replicas) * v for g, v in zip(gradients, variables)]
        self.optimizer.apply(gradients, variables)

    def update_metrics(self, loss, y, logits_adv, gradients, replicas):
        """Running means for the epoch; the gradient norm is that of this replica's
        mean loss (the scaled gradients times R)."""
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(y, logits_adv)
        self.grad_norm_tracker.update_state(tf.linalg.global_norm(gradients) * tf.cast(replicas, tf.float32))
        # Shape (1,), not a scalar: under MultiWorkerMirroredStrategy Keras averages
        # step outputs over axis 0, which a scalar does not have.
        return {m.name: tf.reshape(m.result(), [1]) for m in self.metrics}
