"""The paper's architectures as plain functional Keras models (SPEC §4).

`build` returns an MLP, VGG-18, ResNet-18 or ResNet-101 for any image input shape, scaled in width.
Every model is a ``keras.Model(inputs, outputs)`` made of built-in ``keras.layers`` only (no custom
layer classes, no Lambda), so it saves with ``model.save("m.keras")``, loads with
``keras.models.load_model`` in safe mode, runs under any Keras backend and is traceable by
`cna_tf.ActivationProbe`. The classifier is always ``Dense(num_classes, activation="softmax")``
named ``"classifier"``: the model outputs probabilities (SPEC §1, Margin: never apply softmax
twice).

Choices the paper leaves open, fixed here:

* Small inputs. The paper trains on 28x28 and 32x32 images; ``build`` also accepts e.g. 8x8
  scikit-learn digits. A spatial downsampling step (VGG max-pool, ResNet stride-2 convolution) is
  applied along an axis only while that axis's size is >= 2, so no side ever drops below 1:
  VGG-18 at 8x8 pools 8 -> 4 -> 2 -> 1 and skips the last two pools; at 28x28 it pools
  28 -> 14 -> 7 -> 3 -> 1 (floor, as PyTorch's ``MaxPool2d(2)``). ResNet stride-2 convolutions use
  ``"same"`` padding, giving ceil(n / 2) like PyTorch's padding-1 3x3 convolutions.
* BatchNormalization uses PyTorch's defaults (momentum 0.1 in PyTorch terms, i.e. Keras
  ``momentum=0.9``, ``epsilon=1e-5``), as in the authors' published PyTorch code. Keras' own
  default (0.99) lets the moving statistics lag far behind the short CPU runs this package does,
  and every metric pass runs BN in inference mode (SPEC §1).
* Convolutions before a BatchNormalization have no bias (its beta plays that role), as in the
  published VGG/ResNet code; Dense layers have biases.
* Kernels use Keras' default Glorot-uniform initializer (PyTorch's default is a different
  uniform; the paper does not say). With ``seed=...`` every weighted layer gets its own seeded
  initializer (seeds drawn from one ``random.Random(seed)``), so a build is reproducible without
  touching the global RNG; without it the caller may seed with ``keras.utils.set_random_seed``.

Examples:
    >>> import cna_tf
    >>> model = cna_tf.models.build("vgg18", (32, 32, 3), 10, width=0.25, seed=0)
    >>> model.name
    'vgg18_w0.25'
    >>> probe = cna_tf.ActivationProbe(model)   # 16 conv + 1 hidden dense = 17 probe layers
"""
from __future__ import annotations

import math
import numbers
import random
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import keras
    from keras import layers

__all__ = ["ARCHITECTURES", "DROPOUT_ARCHITECTURES", "INITIALIZERS", "build", "canonical_name", "count_weighted_layers"]

#: Valid architecture names for `build`.
ARCHITECTURES: Tuple[str, ...] = ("mlp", "vgg18", "resnet18", "resnet101")

#: Kernel initializer names accepted by ``build(..., initializer=...)``.
INITIALIZERS: Tuple[str, ...] = ("glorot_uniform", "glorot_normal", "he_normal", "he_uniform",
                                 "lecun_normal", "lecun_uniform")

#: initializer name -> its class in ``keras.initializers``
_INITIALIZER_CLASSES = {
    "glorot_uniform": "GlorotUniform",
    "glorot_normal": "GlorotNormal",
    "he_normal": "HeNormal",
    "he_uniform": "HeUniform",
    "lecun_normal": "LecunNormal",
    "lecun_uniform": "LecunUniform",
}

# VGG-18 (SPEC §4): 5 blocks of 3x3 convolutions, max-pool after each block.
_VGG18_BLOCKS: Tuple[Tuple[int, int], ...] = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
_VGG18_DENSE = 512
# ResNets (SPEC §4): stage widths and blocks per stage; bottleneck expansion 4.
_RESNET_WIDTHS: Tuple[int, ...] = (64, 128, 256, 512)
_RESNET_STAGES: Dict[str, Tuple[str, Tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
_BOTTLENECK_EXPANSION = 4
_MLP_UNITS = 500
_MLP_DEPTH = 5

_COMMON_KWARGS = ("seed", "initializer", "weight_decay")
_CONV_KWARGS = _COMMON_KWARGS + ("bn_momentum", "bn_epsilon")
_VALID_KWARGS: Dict[str, Tuple[str, ...]] = {
    "mlp": _COMMON_KWARGS + ("depth", "units", "dropout"),
    "vgg18": _CONV_KWARGS + ("dropout",),
    "resnet18": _CONV_KWARGS,
    "resnet101": _CONV_KWARGS,
}
#: Architectures with a place for dropout (``build(..., dropout=...)``): after every hidden
#: Dense layer (the MLP's hidden layers, VGG-18's fc layer). The ResNets have none.
DROPOUT_ARCHITECTURES: Tuple[str, ...] = ("mlp", "vgg18")


# --------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------

def canonical_name(name: Any) -> str:
    """The canonical architecture name of a spelling: case, ``-`` and ``_`` are ignored.

    Examples:
        >>> canonical_name("ResNet-18"), canonical_name("VGG_18")
        ('resnet18', 'vgg18')

    Raises:
        ValueError: an unknown name; the message lists `ARCHITECTURES`.
    """
    if isinstance(name, str):
        key = name.strip().lower().replace("-", "").replace("_", "")
        if key in ARCHITECTURES:
            return key
    raise ValueError(f"unknown architecture {name!r}; valid names are {', '.join(ARCHITECTURES)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_input_shape(name: str, input_shape: Any) -> Tuple[int, ...]:
    conv = name != "mlp"
    valid = ("(H, W) or (H, W, C) with positive integer sizes" if conv
             else "a tuple of positive integers, e.g. (784,), (H, W) or (H, W, C)")
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (shape is None or not shape or not all(_is_int(s) and s > 0 for s in shape)
            or (conv and len(shape) not in (2, 3))):
        raise ValueError(f"{name}: bad input_shape {input_shape!r} (without the batch axis); "
                         f"valid input shapes are {valid}")
    return tuple(int(s) for s in shape)


def _check_width(width: Any) -> float:
    if (not isinstance(width, numbers.Real) or isinstance(width, bool)
            or not math.isfinite(float(width)) or float(width) <= 0):
        raise ValueError(f"width must be a finite number > 0 (1.0 = the paper's sizes, "
                         f"e.g. 0.25 for a quarter), got {width!r}")
    return float(width)


def _check_num_classes(num_classes: Any) -> int:
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def _check_kwargs(name: str, kw: Dict[str, Any]) -> None:
    unknown = sorted(set(kw) - set(_VALID_KWARGS[name]))
    if "dropout" in unknown and kw["dropout"]:
        raise ValueError(f"{name} has no place for dropout (only "
                         f"{', '.join(DROPOUT_ARCHITECTURES)}: after their hidden Dense layers); "
                         "leave dropout at 0 for this architecture")
    unknown = [k for k in unknown if not (k == "dropout" and not kw[k])]
    if unknown:
        raise ValueError(f"{name}: unknown keyword argument(s) {', '.join(unknown)}; valid keyword "
                         f"arguments for {name} are {', '.join(_VALID_KWARGS[name])}")
    seed = kw.get("seed")
    if seed is not None and not _is_int(seed):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    init = kw.get("initializer", "glorot_uniform")
    if init not in _INITIALIZER_CLASSES:
        raise ValueError(f"unknown initializer {init!r}; valid initializers are "
                         f"{', '.join(INITIALIZERS)}")
    for key in ("depth", "units"):
        if key in kw and (not _is_int(kw[key]) or kw[key] < 1):
            raise ValueError(f"mlp: {key} must be an integer >= 1, got {kw[key]!r}")
    wd = kw.get("weight_decay", 0.0)
    if not (isinstance(wd, numbers.Real) and not isinstance(wd, bool) and math.isfinite(wd)
            and wd >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0 (0: none), got {wd!r}")
    rate = kw.get("dropout", 0.0)
    if not (isinstance(rate, numbers.Real) and not isinstance(rate, bool) and 0 <= rate < 1):
        raise ValueError(f"dropout must be a rate in [0, 1) (0: none), got {rate!r}")
    if "bn_momentum" in kw and not (isinstance(kw["bn_momentum"], numbers.Real)
                                    and 0 <= kw["bn_momentum"] < 1):
        raise ValueError(f"bn_momentum must be in [0, 1), got {kw['bn_momentum']!r}")
    if "bn_epsilon" in kw and not (isinstance(kw["bn_epsilon"], numbers.Real)
                                   and kw["bn_epsilon"] > 0):
        raise ValueError(f"bn_epsilon must be > 0, got {kw['bn_epsilon']!r}")


def _scaled(channels: int, width: float) -> int:
    """Width-scaled layer size, at least 1 (SPEC §4: width is a parameter)."""
    return max(1, int(round(channels * width)))


# --------------------------------------------------------------------------------------------
# Layer factory: seeded initializers, shared BN settings, descriptive names
# --------------------------------------------------------------------------------------------

class _Factory:
    """Creates the layers of one model with per-layer seeded kernel initializers.

    Keras is imported here, when a model is built, not with the module: checking a name
    (`canonical_name`, `ARCHITECTURES`: a grid's config) does not start TensorFlow.
    """

    def __init__(self, seed: Optional[int], initializer: str, bn_momentum: float,
                 bn_epsilon: float, weight_decay: float = 0.0, dropout: float = 0.0):
        import keras

        self.keras, self.layers = keras, keras.layers
        self._rng = random.Random(seed) if seed is not None else None
        self._init_cls = getattr(keras.initializers, _INITIALIZER_CLASSES[initializer])
        self._bn = dict(momentum=float(bn_momentum), epsilon=float(bn_epsilon))
        self._weight_decay = float(weight_decay)
        self._dropout = float(dropout)
        # dropout seeds come from their own stream, so the kernels' seeds do not depend on it
        self._dropout_rng = random.Random(seed + 1) if seed is not None else None

    def _kernel_regularizer(self) -> Optional[keras.regularizers.Regularizer]:
        return self.keras.regularizers.L2(self._weight_decay) if self._weight_decay > 0 else None

    def dropout(self, x, name: str):
        """``Dropout(rate)`` after a hidden Dense layer; the identity when the rate is 0."""
        if self._dropout <= 0:
            return x
        seed = None if self._dropout_rng is None else self._dropout_rng.randrange(2 ** 31 - 1)
        return self.layers.Dropout(self._dropout, seed=seed, name=name)(x)

    def _kernel_init(self) -> keras.initializers.Initializer:
        seed = None if self._rng is None else self._rng.randrange(2 ** 31 - 1)
        return self._init_cls(seed=seed)

    def dense(self, units: int, activation: Optional[str], name: str) -> layers.Dense:
        return self.layers.Dense(units, activation=activation,
                                 kernel_initializer=self._kernel_init(),
                                 kernel_regularizer=self._kernel_regularizer(), name=name)

    def conv(self, filters: int, kernel: int, strides: Tuple[int, int], name: str
             ) -> layers.Conv2D:
        return self.layers.Conv2D(filters, kernel, strides=strides, padding="same",
                                  use_bias=False, kernel_initializer=self._kernel_init(),
                                  kernel_regularizer=self._kernel_regularizer(), name=name)

    def conv_bn(self, x, filters: int, kernel: int, strides: Tuple[int, int], name: str,
                relu: bool = True):
        """Conv (no bias) -> BatchNormalization [-> ReLU Activation]."""
        x = self.conv(filters, kernel, strides, f"{name}_conv")(x)
        x = self.layers.BatchNormalization(**self._bn, name=f"{name}_bn")(x)
        if relu:
            x = self.layers.Activation("relu", name=f"{name}_relu")(x)
        return x


def _halving(spatial: Sequence[int]) -> Tuple[int, int]:
    """Per-axis factor 2 for a downsampling step, 1 where that side is already < 2."""
    return tuple(2 if s >= 2 else 1 for s in spatial)  # type: ignore[return-value]


def _image_input(input_shape: Tuple[int, ...], f: _Factory):
    """Input layer; an (H, W) shape gets a channel axis of 1 with a Reshape layer."""
    inputs = f.keras.Input(shape=input_shape, name="image")
    x = inputs
    if len(input_shape) == 2:
        x = f.layers.Reshape(input_shape + (1,), name="add_channel")(x)
    return inputs, x


# --------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------

def _mlp(input_shape, num_classes, width, f: _Factory, depth: int = _MLP_DEPTH,
         units: Optional[int] = None):
    units = _scaled(_MLP_UNITS, width) if units is None else int(units)
    inputs = f.keras.Input(shape=input_shape, name="image")
    x = f.layers.Flatten(name="flatten")(inputs)
    for i in range(1, depth + 1):
        x = f.dense(units, "relu", f"dense{i}")(x)
        x = f.dropout(x, f"dropout{i}")
    return inputs, f.dense(num_classes, "softmax", "classifier")(x)


def _vgg18(input_shape, num_classes, width, f: _Factory):
    inputs, x = _image_input(input_shape, f)
    spatial = list(input_shape[:2])
    for b, (channels, convs) in enumerate(_VGG18_BLOCKS, start=1):
        for c in range(1, convs + 1):
            x = f.conv_bn(x, _scaled(channels, width), 3, (1, 1), f"block{b}_{c}")
        pool = _halving(spatial)
        if pool != (1, 1):
            x = f.layers.MaxPooling2D(pool, name=f"block{b}_pool")(x)
            spatial = [s // p for s, p in zip(spatial, pool)]
    x = f.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = f.dense(_scaled(_VGG18_DENSE, width), "relu", "fc")(x)
    x = f.dropout(x, "fc_dropout")
    return inputs, f.dense(num_classes, "softmax", "classifier")(x)


def _basic_block(x, f: _Factory, planes: int, strides, name: str):
    shortcut = x
    out = f.conv_bn(x, planes, 3, strides, f"{name}_1")
    out = f.conv_bn(out, planes, 3, (1, 1), f"{name}_2", relu=False)
    if strides != (1, 1) or x.shape[-1] != planes:
        shortcut = f.conv_bn(x, planes, 1, strides, f"{name}_shortcut", relu=False)
    out = f.layers.Add(name=f"{name}_add")([out, shortcut])
    return f.layers.Activation("relu", name=f"{name}_out")(out)


def _bottleneck_block(x, f: _Factory, planes: int, strides, name: str):
    shortcut = x
    out_ch = planes * _BOTTLENECK_EXPANSION
    out = f.conv_bn(x, planes, 1, (1, 1), f"{name}_1")
    out = f.conv_bn(out, planes, 3, strides, f"{name}_2")  # stride on the 3x3, as in the code
    out = f.conv_bn(out, out_ch, 1, (1, 1), f"{name}_3", relu=False)
    if strides != (1, 1) or x.shape[-1] != out_ch:
        shortcut = f.conv_bn(x, out_ch, 1, strides, f"{name}_shortcut", relu=False)
    out = f.layers.Add(name=f"{name}_add")([out, shortcut])
    return f.layers.Activation("relu", name=f"{name}_out")(out)


def _resnet(kind: str, blocks: Sequence[int]) -> Callable:
    block_fn = _basic_block if kind == "basic" else _bottleneck_block

    def make(input_shape, num_classes, width, f: _Factory):
        inputs, x = _image_input(input_shape, f)
        x = f.conv_bn(x, _scaled(64, width), 3, (1, 1), "stem")
        spatial = list(input_shape[:2])
        for s, (channels, n_blocks) in enumerate(zip(_RESNET_WIDTHS, blocks), start=1):
            for b in range(1, n_blocks + 1):
                strides = _halving(spatial) if (s > 1 and b == 1) else (1, 1)
                spatial = [-(-n // st) for n, st in zip(spatial, strides)]  # ceil, "same"
                x = block_fn(x, f, _scaled(channels, width), strides, f"stage{s}_block{b}")
        x = f.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return inputs, f.dense(num_classes, "softmax", "classifier")(x)

    return make


_BUILDERS: Dict[str, Callable] = {
    "mlp": _mlp,
    "vgg18": _vgg18,
    "resnet18": _resnet(*_RESNET_STAGES["resnet18"]),
    "resnet101": _resnet(*_RESNET_STAGES["resnet101"]),
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def build(name: str, input_shape: Sequence[int], num_classes: int, width: float = 1.0,
          **kw: Any) -> keras.Model:
    """Builds one of the paper's architectures as an uncompiled functional Keras model (SPEC §4).

    Architectures (sizes at ``width=1``; every layer size is ``max(1, round(size * width))``):

    * ``"mlp"``: Flatten, ``depth`` (5) hidden ``Dense(500, activation="relu")`` layers, no
      regularization, ``Dense(num_classes, softmax)``.
    * ``"vgg18"``: 16 conv 3x3 (``padding="same"``, no bias) each followed by BatchNormalization
      and a ReLU Activation layer, in 5 blocks of 64x2, 128x2, 256x4, 512x4, 512x4 channels,
      MaxPooling2D(2) after each block, GlobalAveragePooling2D, ``Dense(512, relu)``,
      ``Dense(num_classes, softmax)`` (16 conv + 2 dense = 18 weighted layers).
    * ``"resnet18"`` / ``"resnet101"``: CIFAR-style ResNet: 3x3 stem conv (64) + BN + ReLU; basic
      blocks [2, 2, 2, 2] / bottleneck blocks (expansion 4) [3, 4, 23, 3] in stages of 64, 128,
      256, 512 channels; stride 2 in the first block of stages 2-4; a 1x1 conv + BN shortcut
      where the shape changes; ``Add`` then ReLU; GlobalAveragePooling2D,
      ``Dense(num_classes, softmax)``. About 11.17 M (ResNet-18) and 42.5 M (ResNet-101)
      trainable parameters for 32x32x3 inputs and 10 classes.

    Any input shape works, e.g. 8x8x1 digits, 28x28x1 MNIST, 32x32x3 CIFAR: the spatial
    downsampling (VGG max-pools, ResNet stride-2 convolutions) is applied along an axis only
    while that axis's size is >= 2, and skipped otherwise. An ``(H, W)`` input shape is kept as
    the model's input shape and gets a channel axis of 1 inside the model (a Reshape layer).

    Every model is a ``keras.Model(inputs, outputs)`` of built-in layers only, so it saves as
    ``.keras`` and loads with ``keras.models.load_model`` in safe mode; its name says what it is
    (``"vgg18_w0.25"``). Its output is softmax probabilities (layer ``"classifier"``).

    Examples:
        >>> model = build("resnet18", (32, 32, 3), 10, width=0.25, seed=0)
        >>> model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.8),
        ...               loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        >>> build("mlp", (8, 8), 10, depth=3).name
        'mlp_w1'

    Args:
        name: ``"mlp"``, ``"vgg18"``, ``"resnet18"`` or ``"resnet101"`` (case, ``-`` and ``_``
            are ignored: ``"ResNet-18"`` works).
        input_shape: one input's shape without the batch axis: ``(H, W)`` or ``(H, W, C)`` for
            the conv nets; any shape of positive sizes for the MLP (it flattens).
        num_classes: number of classes, >= 2.
        width: multiplier of every hidden layer size (channels and units); > 0.
        **kw: architecture options:

            * ``seed`` (int, all): seeds every weighted layer's kernel initializer (each layer
              its own seed, drawn from ``random.Random(seed)``); the global RNG is not touched.
              Default None: Keras' unseeded initializers (seed them with
              ``keras.utils.set_random_seed`` if needed).
            * ``initializer`` (str, all): kernel initializer, one of `INITIALIZERS`;
              default ``"glorot_uniform"`` (Keras' default). Biases and BN start at 0 / 1.
            * ``depth`` (int, mlp): number of hidden layers, default 5.
            * ``units`` (int, mlp): hidden layer size; overrides ``round(500 * width)``.
            * ``bn_momentum`` / ``bn_epsilon`` (conv nets): BatchNormalization settings,
              default 0.9 / 1e-5 (PyTorch's defaults, as in the published code).
            * ``weight_decay`` (float, all): an ``L2(weight_decay)`` kernel regularizer on
              every Dense and Conv2D kernel (biases and BN untouched), i.e.
              ``weight_decay * sum(W**2)`` added to the loss; default 0 (none, the paper's).
            * ``dropout`` (float, mlp and vgg18, see `DROPOUT_ARCHITECTURES`): a
              ``Dropout(rate)`` layer after every hidden Dense layer (the MLP's hidden layers,
              VGG-18's fc); seeded from ``seed``. Default 0 (no layer added). The ResNets have
              no place for it: a non-zero rate there is a ValueError.

    Returns:
        An uncompiled, built ``keras.Model``.

    Raises:
        ValueError: for an unknown name, an input shape that cannot work (not 2 or 3 positive
            sizes for a conv net), ``width <= 0``, ``num_classes < 2`` or an unknown/bad keyword
            argument; the message lists the valid choices.
    """
    arch = canonical_name(name)
    shape = _check_input_shape(arch, input_shape)
    width = _check_width(width)
    num_classes = _check_num_classes(num_classes)
    _check_kwargs(arch, kw)
    factory = _Factory(kw.pop("seed", None), kw.pop("initializer", "glorot_uniform"),
                       kw.pop("bn_momentum", 0.9), kw.pop("bn_epsilon", 1e-5),
                       weight_decay=kw.pop("weight_decay", 0.0), dropout=kw.pop("dropout", 0.0))
    inputs, outputs = _BUILDERS[arch](shape, num_classes, width, factory, **kw)
    return factory.keras.Model(inputs, outputs, name=f"{arch}_w{width:g}")


def count_weighted_layers(model: keras.Model) -> int:
    """Number of Dense/Conv2D layers of a model built by `build` (the classifier included).

    ``cna_tf.ActivationProbe(model).num_layers`` is this minus 1 (the classifier is left out by
    default, SPEC §1).
    """
    from keras import layers

    return sum(isinstance(layer, (layers.Dense, layers.Conv2D)) for layer in model.layers)
