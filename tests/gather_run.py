"""Gather (index, row) pairs from 2 mirrored CPU replicas holding batches of
different sizes (3 and 2 pairs, as in a partial last batch). Prints the gathered
indices and rows each replica received, as JSON. Used by test_distribute.py."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from sglr_keras.distribute import make_strategy  # noqa: E402
from sglr_keras.sglr import gather_across_replicas  # noqa: E402

strategy = make_strategy("mirrored", cpu_replicas=2)
local = {0: ([4, 0, 7], [[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]]), 1: ([2, 9], [[0.0, 1.0], [0.125, 0.875]])}


def values(context):
    indices, rows = local[context.replica_id_in_sync_group]
    return tf.constant(indices, tf.int32), tf.constant(rows, tf.float32)


indices_and_rows = strategy.experimental_distribute_values_from_function(values)


@tf.function
def gather(pairs):
    def step(pair):
        return gather_across_replicas(tf.distribute.get_replica_context(), pair[0], pair[1], pad_index=10)

    return strategy.run(step, args=(pairs,))


gathered_indices, gathered_rows = gather(indices_and_rows)
print(json.dumps({"indices": [v.numpy().tolist() for v in strategy.experimental_local_results(gathered_indices)],
                  "rows": [v.numpy().tolist() for v in strategy.experimental_local_results(gathered_rows)]}))
