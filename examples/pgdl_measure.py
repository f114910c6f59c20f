"""A generalization measure in PGDL 2020's form, for `mlflow run . -e score` (SPEC §11).

PGDL's interface: a function ``complexity(model, dataset) -> float`` where ``model`` is a trained
``keras.Model`` and ``dataset`` a ``tf.data.Dataset`` of ``(inputs, labels)`` batches of the
network's own training set; a larger value predicts a larger generalization gap. Any name works:
``score`` is told ``examples/pgdl_measure.py:input_grad_norm`` and logs the metric under the
function's name (or ``-P name=...``).

This one is the input-output sensitivity of Novak et al. (ICLR 2018, "Sensitivity and
Generalization in Neural Networks"), who found that networks whose output changes fast around
their training points generalize worse: the mean, over the training points, of the L2 norm of the
gradient of the network's probability for the true class with respect to the input. One forward
and one backward pass over the training set (TensorFlow backend).

    mlflow run . --env-manager local -e score --experiment-name cna_tf-demo \
        -P measure=examples/pgdl_measure.py:input_grad_norm
"""
import tensorflow as tf


def input_grad_norm(model, dataset) -> float:
    """Mean over the training points of ||d p(true class | x) / d x||_2.

    Args:
        model: the trained ``keras.Model`` (outputs class probabilities).
        dataset: ``tf.data.Dataset`` of ``(inputs, integer labels)`` batches.

    Returns:
        The mean input-gradient norm; larger: a more sensitive network, a larger predicted gap.
    """
    total, count = 0.0, 0
    for x, y in dataset:
        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            probs = model(x, training=False)
            # each point's true-class probability depends on its own input only (inference
            # mode), so the gradient of their sum holds every point's own gradient
            true = tf.gather(probs, tf.cast(y, tf.int32), axis=1, batch_dims=1)
            target = tf.reduce_sum(true)
        grads = tape.gradient(target, x)
        norms = tf.norm(tf.reshape(grads, (tf.shape(grads)[0], -1)), axis=1)
        total += float(tf.reduce_sum(norms))
        count += int(norms.shape[0])
    return total / count
