"""keras.io's "Simple MNIST convnet" with CNA measured while it trains (docs/keras.md).

The example as keras.io writes it (to_categorical labels, categorical_crossentropy), with four
changes, each marked "cna_tf:": the data are the 5,000 MNIST digits cna_tf ships (offline), the
raw images are kept for alpha, fit gets a CNACallback and EarlyStopping on cna_test, and the
end prints the CNA metrics and the intermediate outputs of the trained net.

Run: python examples/keras_mnist_convnet.py [EPOCHS]   (default 15, as on keras.io)
"""
import sys

import numpy as np
import keras
from keras import layers

import cna_tf  # cna_tf: the metrics and the callback

# Model / data parameters
num_classes = 10
input_shape = (28, 28, 1)

# Load the data and split it between train and test sets
# cna_tf: 5,000 real MNIST digits, offline, in keras.datasets.mnist's layout: uint8 (n, 28, 28)
ds = cna_tf.data.load("mnist5k")
(x_train, y_train), (x_test, y_test) = (ds.x_train[..., 0], ds.y_train), (ds.x_test[..., 0],
                                                                          ds.y_test)
raw_train, raw_test = x_train, x_test  # cna_tf: alpha is measured on the raw images

# Scale images to the [0, 1] range
x_train = x_train.astype("float32") / 255
x_test = x_test.astype("float32") / 255
# Make sure images have shape (28, 28, 1)
x_train = np.expand_dims(x_train, -1)
x_test = np.expand_dims(x_test, -1)
print("x_train shape:", x_train.shape)
print(x_train.shape[0], "train samples")
print(x_test.shape[0], "test samples")

# convert class vectors to binary class matrices
y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

model = keras.Sequential(
    [
        keras.Input(shape=input_shape),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ]
)

model.summary()

batch_size = 128
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 15  # cna_tf: EPOCHS from the command line

model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])


# cna_tf: the callback maps raw images to model inputs exactly as above
def preprocess(raw):
    return np.expand_dims(raw.astype("float32") / 255, -1)


cna = cna_tf.CNACallback((raw_train, y_train), (raw_test, y_test), preprocess=preprocess,
                         value_range=(0, 255), verbose=1)
stop = keras.callbacks.EarlyStopping(monitor="cna_test", mode="max", patience=3)
model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_split=0.1,
          callbacks=[cna, stop])  # cna_tf: list the CNACallback before EarlyStopping

score = model.evaluate(x_test, y_test, verbose=0)
print("Test loss:", score[0])
print("Test accuracy:", score[1])

# cna_tf: the last full snapshot's metrics, and every conv layer's output (keract's job)
final = cna.history[max(cna.history)]
for key in ("cna_train", "cna_test", "cna_area", "margin", "cna_margin", "gen_gap"):
    print(f"{key}: {final[key]:.4f}")
probe = cna_tf.ActivationProbe(model, mode="post")
for name, activation in probe.layer_outputs(x_test[:8]).items():
    print(f"layer_outputs[{name!r}]: shape {activation.shape}")
