"""Activation extraction: per-layer reduced activations z_d(x), computed in-graph.

`ActivationProbe` wraps a user's Keras model in one extra Keras model whose outputs are the
per-sample sums (or means) of each probe layer's activation, stacked into an (n, L) array, next to
the model's own outputs. The reduction runs inside the compiled predict
function, so only (n, L) sums and (n, classes) outputs cross from the device to the host.

The probe replays the model's layer graph inside a single wrapper layer: nested models are
expanded in call order, every layer runs with ``training=False``, and no layer of the user's model
gets a new node or a changed attribute. A fused activation's pre-activation is computed by running
the layer's own ``call`` against a read-only view of the layer whose activation is None, inside
the executed call, so the affine part is computed once and the activation is applied once.

A subclassed model (layers as attributes, ``call()`` in Python), or a model holding custom layers
with Dense/Conv sublayers, has no layer graph to replay: `layer_graph` records one by running its
``call()`` once on symbolic ``keras.Input`` tensors, with every such container running its own
``call()`` instead of becoming one opaque node, so each layer and ``keras.ops`` operation it calls
becomes a node in call order. The twin shares the model's layers; the nodes the trace added to
them are removed again.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
from keras import ops

try:  # Keras 3 keeps the Functional class here; it is the type of every keras.Model(inputs, outputs).
    from keras.src.models.functional import Functional as _Functional
except ImportError:  # pragma: no cover - future Keras layouts
    _Functional = keras.Model

__all__ = ["ActivationProbe", "affine_layers", "named_affine_layers", "graph_inputs", "replay",
           "layer_graph", "UntraceableModelError", "AFFINE_LAYER_TYPES"]

AFFINE_LAYER_TYPES: Tuple[type, ...] = tuple(
    getattr(keras.layers, name) for name in (
        "Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D",
        "SeparableConv1D", "SeparableConv2D", "Conv1DTranspose", "Conv2DTranspose",
        "Conv3DTranspose") if hasattr(keras.layers, name))

_NONLINEAR_LAYERS = tuple(
    getattr(keras.layers, name) for name in ("ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax")
    if hasattr(keras.layers, name))
# Class names of keras.ops operations that can appear as nodes of a functional graph.
_NONLINEAR_OPS = {"relu", "relu6", "sigmoid", "tanh", "softmax", "logsoftmax", "gelu", "silu",
                  "elu", "selu", "softplus", "softsign", "leakyrelu", "hardsigmoid", "hardsilu",
                  "mish", "celu", "glu", "sparseplus", "squareplus", "hardtanh", "tanhshrink"}


class UntraceableModelError(TypeError):
    """The probe cannot see the layer graph of a model (an unbuilt model, or a subclassed
    model whose ``call()`` cannot be traced on symbolic inputs)."""


def _is_affine(op) -> bool:
    return isinstance(op, AFFINE_LAYER_TYPES)


def _is_linear(fn) -> bool:
    return fn is None or fn is keras.activations.linear or getattr(fn, "__name__", "") == "linear"


def _has_fused_nonlinearity(layer) -> bool:
    return not _is_linear(getattr(layer, "activation", None))


def _is_nonlinearity(op) -> bool:
    if isinstance(op, keras.layers.Activation):
        return not _is_linear(op.activation)
    if isinstance(op, _NONLINEAR_LAYERS):
        return True
    return (not isinstance(op, keras.layers.Layer)
            and type(op).__name__.lower().replace("_", "") in _NONLINEAR_OPS)


def _is_model(op) -> bool:
    return isinstance(op, keras.Model)


def _is_graph_model(op) -> bool:
    return isinstance(op, (_Functional, keras.Sequential))


def _is_container(op) -> bool:
    """A layer whose Python ``call()`` hides Dense/Conv sublayers from any layer graph: a
    subclassed keras.Model or a custom Layer (e.g. a residual block) holding weighted layers."""
    if not isinstance(op, keras.layers.Layer) or _is_affine(op) or _is_graph_model(op):
        return False
    return any(_is_affine(sub) for sub in op._flatten_layers(include_self=False, recursive=True))


def _opaque_ops(graph) -> List[Any]:
    return [op for op in graph.operations if _is_container(op)]


# model -> (traced Functional, {id(layer): name prefix}); a model is traced once.
_TRACED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_TRACE_LOCK = threading.RLock()

_TRACE_FIX = (
    "The probe runs call() once on symbolic keras.Input tensors (training=False) to record the "
    "order in which it calls its Dense/Conv layers, so call() must be written in Keras layers "
    "and keras.ops: no Python if/while on tensor values (use keras.ops.where), no "
    "backend-specific functions (tf.*, jax.numpy, torch.*) on tensors, and every Dense/Conv "
    "layer called directly, not inside keras.ops.cond/while_loop or a tf.function. Otherwise "
    "build the network with the functional API (keras.Model(inputs, outputs)) from the same "
    "layer objects, so trained weights carry over.")


def _untraceable(model, what: str) -> UntraceableModelError:
    return UntraceableModelError(
        f"ActivationProbe cannot trace {type(model).__name__} '{getattr(model, 'name', model)}': "
        f"{what}. {_TRACE_FIX}")


def _trace_inputs(model) -> Any:
    """Symbolic inputs for a trace: the graph's own inputs' specs, or the shape a subclassed
    model was built with (its batch dimension left free)."""
    if _is_graph_model(model):
        graph = model if isinstance(model, _Functional) else model._functional
        flat = [keras.Input(batch_shape=(None,) + tuple(t.shape[1:]), dtype=t.dtype)
                for t in graph.inputs]
        return keras.tree.pack_sequence_as(graph._inputs_struct, flat)
    shapes = getattr(model, "_build_shapes_dict", None)
    if model.built and not shapes:
        raise _untraceable(model, "Keras recorded no input shape when it built the model, "
                                  "because its own symbolic run of call() failed too")
    if not shapes:
        raise UntraceableModelError(
            f"subclassed model '{model.name}' ({type(model).__name__}) has not been built, so "
            "its input shape is unknown. Call it once on a batch (model(x[:1])) or call "
            "model.build((None, ...)) before creating an ActivationProbe (fit() builds it too).")
    if len(shapes) != 1:
        raise _untraceable(model, f"its call() takes {len(shapes)} tensor arguments "
                                  f"({', '.join(shapes)}); the probe traces one input argument "
                                  "(a tensor, or a list/dict of tensors)")
    shape = next(iter(shapes.values()))

    def is_shape(s) -> bool:
        return isinstance(s, (tuple, list)) and all(d is None or isinstance(d, int) for d in s)

    def make(s):
        return keras.Input(batch_shape=(None,) + tuple(s[1:]), dtype=model.input_dtype)

    if is_shape(shape):
        return make(shape)
    if isinstance(shape, dict):
        return {k: make(v) for k, v in shape.items()}
    return [make(s) for s in shape]


def _expansion(model) -> Tuple[List[Any], Dict[int, str]]:
    """The containers to open during a trace (model first) and every sublayer's name prefix
    (``block/`` for a layer held by a custom block ``block``; nested functional models are not
    opened, the replay expands them)."""
    containers, prefixes = [model], {}

    def visit(layer, prefix: str) -> None:
        for sub in layer._flatten_layers(include_self=False, recursive=False):
            prefixes.setdefault(id(sub), prefix)
            if _is_container(sub) and all(sub is not c for c in containers):
                containers.append(sub)
                visit(sub, f"{prefix}{sub.name}/")

    visit(model, "")
    return containers, prefixes


def _trace(model) -> Tuple["_Functional", Dict[int, str]]:
    """A functional twin of ``model`` recorded from one symbolic run of its ``call()``.

    Every container (the model, custom layers holding Dense/Conv layers) runs its own
    ``call()`` on ``keras.KerasTensor`` inputs instead of being one opaque node, so each layer
    and keras.ops operation it calls becomes a node of the graph in call order. The twin
    shares the model's layer objects (its weights are the model's); the nodes the trace adds to
    those layers are removed again, so the user's layers are left as they were.
    """
    cached = _TRACED.get(model)
    if cached is not None:
        return cached
    with _TRACE_LOCK:
        inputs = _trace_inputs(model)
        containers, prefixes = _expansion(model)
        layers = [model] + list(model._flatten_layers(include_self=False, recursive=True))
        saved = [(op, len(op._inbound_nodes), len(op._outbound_nodes)) for op in layers]
        history: Dict[int, Tuple[Any, Any]] = {}

        def opened(layer):
            def symbolic_call(*args, **kwargs):
                out = layer.call(*args, **kwargs)
                for t in keras.tree.flatten(out):
                    if isinstance(t, keras.KerasTensor) and id(t) not in history:
                        history[id(t)] = (t, getattr(t, "_keras_history", None))
                return out
            return symbolic_call

        try:
            for layer in containers:
                # Operation.__call__ looks symbolic_call up on the instance: this layer's own
                # call() then runs on the KerasTensors, and the layers inside record nodes.
                object.__setattr__(layer, "symbolic_call", opened(layer))
            kwargs = {"training": False} if getattr(model, "_call_has_training_arg", False) \
                else {}
            try:
                outputs = model(inputs, **kwargs)
                # Layer.__call__ then adds a node of the container itself, which re-labels its
                # outputs as the container's: give them back the history of their producer.
                for t, h in history.values():
                    t._keras_history = h
                graph = keras.Model(inputs, outputs, name=f"{model.name}_traced")
            except UntraceableModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported as one error with the fix
                raise _untraceable(
                    model, f"running its call() on symbolic inputs failed with "
                           f"{type(exc).__name__}: {exc}") from exc
        finally:
            for layer in containers:
                if "symbolic_call" in vars(layer):
                    object.__delattr__(layer, "symbolic_call")
            for op, n_in, n_out in saved:
                del op._inbound_nodes[n_in:]
                del op._outbound_nodes[n_out:]
        reached = {id(op) for op in graph._flatten_layers(include_self=False, recursive=True)}
        missing = [op.name for op in layers if _is_affine(op) and op.built
                   and id(op) not in reached]
        if missing:
            raise _untraceable(
                model, f"its weighted layers {missing[:5]} hold weights but were not called as "
                       "graph nodes during the trace (called inside an operation the trace "
                       "cannot see into, or only when training=True)")
        _TRACED[model] = (graph, prefixes)
        return graph, prefixes


def _graph_of(model) -> Tuple["_Functional", Dict[int, str]]:
    """The Functional graph to replay, and the name prefixes of layers inside custom blocks.

    A Functional or Sequential model is its own graph unless it holds custom layers with
    Dense/Conv sublayers; those, and subclassed models, are traced (`_trace`).
    """
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise UntraceableModelError(
                f"Sequential model '{model.name}' has no defined input shape, so its layer graph "
                "does not exist yet. Start it with keras.Input(shape=...) or call "
                "model.build(input_shape) before creating an ActivationProbe.")
        if not _opaque_ops(graph):
            return graph, {}
    elif isinstance(model, _Functional) and not _opaque_ops(model):
        return model, {}
    return _trace(model)


def layer_graph(model: keras.Model) -> keras.Model:
    """The Functional model whose layer graph the probe replays.

    A Functional model itself; a Sequential model's graph; for a subclassed model (or a model
    holding custom layers with Dense/Conv sublayers) a functional twin traced from one
    symbolic run of ``call()``, sharing the model's layers and weights.

    Raises:
        UntraceableModelError: an unbuilt model or a ``call()`` that cannot be traced.
    """
    return _graph_of(model)[0]


def _check_opaque(op) -> None:
    """A custom layer that hides Dense/Conv sublayers would silently drop probe layers."""
    if not isinstance(op, keras.layers.Layer):
        return
    hidden = [sub.name for sub in op._flatten_layers(include_self=False, recursive=True)
              if _is_affine(sub)]
    if hidden:
        raise UntraceableModelError(
            f"layer '{op.name}' ({type(op).__name__}) is a custom layer with weighted sublayers "
            f"{hidden[:5]} that ActivationProbe cannot see inside. Write that block as a "
            "functional sub-model (keras.Model(inputs, outputs)) so each Dense/Conv layer is a "
            "node of the graph.")


class _LinearView:
    """Reads every attribute of a layer except ``activation``, which is None.

    Running ``type(layer).call(view, x)`` gives the layer's affine output with the layer's own
    weights and code, without changing the layer.
    """

    __slots__ = ("_layer",)
    activation = None

    def __init__(self, layer):
        object.__setattr__(self, "_layer", layer)

    def __getattr__(self, name):
        return getattr(self._layer, name)


_SWITCH_LOCK = threading.Lock()


def _affine_call(layer, x):
    """The layer's output before its fused activation (computed once, at run time)."""
    x = ops.cast(x, layer.compute_dtype)
    try:
        return type(layer).call(_LinearView(layer), x)
    except TypeError:
        # A subclass whose call() uses super() cannot run on a view: switch the activation off
        # for the duration of this executed call only (never while building a graph).
        with _SWITCH_LOCK:
            saved = layer.activation
            layer.activation = None
            try:
                return layer.call(x)
            finally:
                layer.activation = saved


@dataclass
class _Step:
    kind: str                      # "call", "enter" or "exit"
    scope: int
    node: Any
    op: Any = None
    probe: Optional[int] = None    # probe index of this affine layer
    split: bool = False            # compute the pre-activation separately (fused activation)
    records: List[int] = field(default_factory=list)  # probes whose post value is this output
    inner_scope: int = 0
    inner_graph: Any = None


@dataclass
class _Probe:
    name: str
    layer: Any
    fused: bool


class _Plan:
    """A flat replay plan of a (possibly nested) functional graph."""

    def __init__(self, model, mode: str):
        self.mode = mode
        self.graph, prefixes = _graph_of(model)
        self.steps: List[_Step] = []
        self.probes: List[_Probe] = []
        self._pending: Dict[Tuple[int, int], Tuple[int, int]] = {}  # key -> (probe, BN hops)
        self._resolved: set = set()
        self._scopes = 0
        self._calls: Dict[int, int] = {}
        self._walk(self.graph, 0, "", prefixes)

    @staticmethod
    def _ordered_nodes(graph) -> list:
        order = {id(op): i for i, op in enumerate(graph.operations)}
        nodes = []
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            level = [n for n in graph._nodes_by_depth[depth]
                     if n.operation is not None and not n.is_input]
            level.sort(key=lambda n: order.get(id(n.operation), 0))
            nodes.extend(level)
        return nodes

    def _mark_pending(self, key, probe: int, hops: int) -> None:
        if probe not in self._resolved:
            self._pending[key] = (probe, hops)

    def _walk(self, graph, scope: int, prefix: str, prefixes: Dict[int, str]) -> None:
        for node in self._ordered_nodes(graph):
            op = node.operation
            in_keys = [(scope, id(t)) for t in node.input_tensors]
            out_keys = [(scope, id(t)) for t in node.outputs]
            if _is_model(op):
                inner, inner_prefixes = _graph_of(op)
                self._scopes += 1
                inner_scope = self._scopes
                self.steps.append(_Step("enter", scope, node, op, inner_scope=inner_scope,
                                        inner_graph=inner))
                for k, t in zip(in_keys, inner.inputs):
                    if k in self._pending:
                        self._pending[(inner_scope, id(t))] = self._pending[k]
                self._walk(inner, inner_scope, f"{prefix}{prefixes.get(id(op), '')}{op.name}/",
                           inner_prefixes)
                self.steps.append(_Step("exit", scope, node, op, inner_scope=inner_scope,
                                        inner_graph=inner))
                for t, k in zip(inner.outputs, out_keys):
                    if (inner_scope, id(t)) in self._pending:
                        self._pending[k] = self._pending[(inner_scope, id(t))]
                continue
            step = _Step("call", scope, node, op)
            if _is_affine(op):
                count = self._calls.get(id(op), 0)
                self._calls[id(op)] = count + 1
                name = (f"{prefix}{prefixes.get(id(op), '')}{op.name}"
                        + (f"@{count}" if count else ""))
                fused = _has_fused_nonlinearity(op)
                step.probe = len(self.probes)
                step.split = fused and self.mode == "pre"
                self.probes.append(_Probe(name, op, fused))
                if self.mode == "post" and not fused:
                    self._mark_pending(out_keys[0], step.probe, 0)
            else:
                _check_opaque(op)
                if self.mode == "post":
                    for k in in_keys:
                        if k not in self._pending:
                            continue
                        probe, hops = self._pending[k]
                        if probe in self._resolved:
                            continue
                        if _is_nonlinearity(op):
                            step.records.append(probe)
                            self._resolved.add(probe)
                        elif isinstance(op, keras.layers.BatchNormalization) and hops == 0:
                            self._mark_pending(out_keys[0], probe, 1)
            self.steps.append(step)

    def unresolved(self) -> List[int]:
        return [i for i, p in enumerate(self.probes) if not p.fused and i not in self._resolved]

    def run(self, inputs: Sequence[Any], training: bool = False) -> Tuple[List[Any], Any]:
        """Executes the plan on backend tensors; returns (per-probe activations, outputs).

        Metric passes use ``training=False`` (inference mode); a training term (CNA as a loss)
        runs the same graph with the training flag of its train step.
        """
        env: Dict[int, Dict[int, Any]] = {0: {id(t): v for t, v in zip(self.graph.inputs, inputs)}}
        values: List[Any] = [None] * len(self.probes)
        for step in self.steps:
            outer = env[step.scope]
            if step.kind == "enter":
                env[step.inner_scope] = {id(t): outer[id(s)] for t, s in
                                         zip(step.inner_graph.inputs, step.node.input_tensors)}
                continue
            if step.kind == "exit":
                inner = env.pop(step.inner_scope)
                for t, o in zip(step.inner_graph.outputs, step.node.outputs):
                    outer[id(o)] = inner[id(t)]
                continue
            op = step.op
            args, kwargs = step.node.arguments.fill_in(outer)
            kwargs.pop("training", None)
            if isinstance(op, keras.layers.Layer) and getattr(op, "_call_has_training_arg", False):
                kwargs["training"] = bool(training)
            if step.split:
                z = _affine_call(op, args[0])
                values[step.probe] = z
                out = op.activation(z)
            else:
                out = op(*args, **kwargs)
                if step.probe is not None:
                    values[step.probe] = out
            for probe in step.records:
                values[probe] = out
            for t, v in zip(step.node.outputs, keras.tree.flatten(out)):
                outer[id(t)] = v
        outputs = [env[0][id(t)] for t in self.graph.outputs]
        return values, keras.tree.pack_sequence_as(self.graph._outputs_struct, outputs)


class _ProbeLayer(keras.layers.Layer):
    """Runs a `_Plan` and reduces each probe layer's activation per sample.

    With ``reduce=None`` it returns the probe layers' activations themselves (float32), a list
    in forward order, instead of ``(sums, outputs)``.
    """

    def __init__(self, model, plan: _Plan, reduce: str, keep: int, softmax_last: bool, **kwargs):
        super().__init__(**kwargs)
        self.wrapped = model
        self._plan = plan
        self._reduce = reduce
        self._keep = keep
        self._softmax_last = softmax_last

    @property
    def metrics(self):
        # The wrapped model may be compiled; its metrics belong to its own training loop.
        return []

    def call(self, inputs, training=False):
        values, outputs = self._plan.run(keras.tree.flatten(inputs), training=bool(training))
        values = values[: self._keep]
        if self._softmax_last:
            values[-1] = ops.softmax(values[-1], axis=-1)
        if self._reduce is None:
            return [ops.cast(v, "float32") for v in values]
        reduced = []
        for v in values:
            v = ops.cast(v, "float32")
            axes = tuple(range(1, len(v.shape)))
            reduced.append(ops.sum(v, axis=axes) if self._reduce == "sum"
                           else ops.mean(v, axis=axes))
        return ops.stack(reduced, axis=1), outputs

    def compute_output_spec(self, inputs, training=False):
        if self._reduce is None:  # the activations' shapes: trace the plan symbolically
            return super().compute_output_spec(inputs, training=training)
        batch = keras.tree.flatten(inputs)[0].shape[0]
        outputs = self.wrapped.compute_output_spec(inputs)
        return keras.KerasTensor((batch, self._keep), dtype="float32"), outputs


class ActivationProbe:
    """Per-layer activation sums z_d(x) of a Keras model, reduced in-graph (SPEC §1).

    The probe layers d = 1..L are the model's weighted affine layers (Dense, Conv*, DepthwiseConv,
    SeparableConv, Conv*Transpose, including residual shortcut convolutions) in forward order,
    with layers of nested models expanded. The classifier (the last of them) is left out unless
    ``include_output=True``. Every pass runs in inference mode.

    Examples:
        >>> probe = cna_tf.ActivationProbe(model)
        >>> sums = probe.layer_sums(x_test)          # (n, L) numpy array
        >>> b = cna_tf.beta(sums)

    Args:
        model: a built ``keras.Model``: Functional, Sequential or subclassed. Nested models
            are expanded in call order. A subclassed model, or a custom layer holding
            Dense/Conv layers (a residual block), is traced: its ``call()`` runs once on
            symbolic ``keras.Input`` tensors with ``training=False``, which records the layers
            it calls in the order it calls them (`layer_graph`); layers inside a custom block
            are named ``block/layer``. The probe then replays that graph like a functional one.
        mode: ``"pre"`` (default, paper §3.2): each layer's affine output before its fused
            activation and before any following BatchNormalization. ``"post"``: the first
            nonlinearity downstream of the layer (its fused activation, or an Activation/ReLU
            layer reached through at most one BatchNormalization); the classifier's post value is
            its softmax. A layer with no such nonlinearity (e.g. a shortcut conv feeding an Add)
            gives its affine output.
        reduce: ``"sum"`` (default, paper) or ``"mean"`` over all units (positions, channels).
        include_output: keep the classifier layer as the last probe layer.

    Raises:
        UntraceableModelError: an unbuilt model, or a ``call()`` that cannot be traced on
            symbolic inputs (Python control flow on tensor values, backend-specific functions,
            Dense/Conv layers called inside ``keras.ops.cond``/``while_loop``); the message
            names the model, what failed and the fix.
        ValueError: for a bad ``mode``/``reduce`` or fewer than two probe layers.
    """

    def __init__(self, model: keras.Model, mode: str = "pre", reduce: str = "sum",
                 include_output: bool = False):
        if mode not in ("pre", "post"):
            raise ValueError(f"mode must be 'pre' or 'post', got {mode!r}")
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        if not isinstance(model, keras.Model):
            raise UntraceableModelError(
                f"ActivationProbe expects a keras.Model, got {type(model).__name__}")
        self.model = model
        self.mode = mode
        self.reduce = reduce
        self.include_output = include_output
        plan = _Plan(model, mode)
        n_all = len(plan.probes)
        keep = n_all if include_output else n_all - 1
        if keep < 2:
            raise ValueError(
                f"model '{model.name}' has {n_all} weighted affine layer(s) (Dense/Conv), "
                f"{keep} of them probed with include_output={include_output}; beta is a slope "
                "over depth and needs at least 2. Use a deeper model"
                + ("" if include_output else " or include_output=True") + ".")
        self._plan = plan
        self._probes = plan.probes[:keep]
        softmax_last = (include_output and mode == "post" and (n_all - 1) in plan.unresolved())
        self._softmax_last = softmax_last
        self._outputs_model: Optional[keras.Model] = None
        graph = plan.graph
        self._input_shapes = [tuple(t.shape) for t in graph.inputs]
        model_inputs = self._symbolic_inputs()
        layer = _ProbeLayer(model, plan, reduce, keep, softmax_last, name=f"{model.name}_probe")
        self.layer = layer
        sums, outputs = layer(model_inputs)
        self.sums_model = keras.Model(model_inputs, sums, name=f"{model.name}_probe_sums")
        self.full_model = keras.Model(model_inputs, [sums, outputs],
                                      name=f"{model.name}_probe_full")

    def _symbolic_inputs(self):
        inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype,
                              name=t._keras_history.operation.name)
                  for t in self._plan.graph.inputs]
        return inputs if len(inputs) > 1 else inputs[0]

    def check_inputs(self, x) -> None:
        """Raises a ValueError naming the expected and the given shapes for mismatched inputs.

        Arrays and tensors are checked (one per model input, in order); datasets, generators and
        dicts are left to Keras.

        Raises:
            ValueError: a wrong number of input arrays or a wrong per-sample shape.
        """
        if isinstance(x, dict) or _batch(x, None) is None:
            return
        leaves = list(x) if isinstance(x, (list, tuple)) else [x]
        if not all(hasattr(a, "shape") for a in leaves):
            return
        want = self._input_shapes
        got = [tuple(int(d) if d is not None else None for d in a.shape) for a in leaves]
        shown = lambda shapes: ", ".join(str(s) for s in shapes)  # noqa: E731
        if len(got) != len(want):
            raise ValueError(
                f"ActivationProbe: model '{self.model.name}' takes {len(want)} input(s) of shape "
                f"{shown(want)}, got {len(got)} array(s) of shape {shown(got)}")
        for i, (w, g) in enumerate(zip(want, got)):
            if len(w) != len(g) or any(a is not None and a != b for a, b in zip(w[1:], g[1:])):
                which = f"input {i} " if len(want) > 1 else "inputs "
                raise ValueError(
                    f"ActivationProbe: model '{self.model.name}' expects {which}of shape {w} "
                    f"(None = any size), got shape {g}. Pass the model inputs (e.g. "
                    "preprocess(raw_images)) with the shape the model was built for.")

    @property
    def layer_names(self) -> List[str]:
        """Names of the probe layers in forward order (nested layers as ``outer/inner``)."""
        return [p.name for p in self._probes]

    @property
    def layers(self) -> List[keras.layers.Layer]:
        """The probe layer objects in forward order."""
        return [p.layer for p in self._probes]

    @property
    def num_layers(self) -> int:
        return len(self._probes)

    def layer_sums(self, x, batch_size: Optional[int] = None) -> np.ndarray:
        """Reduced activation of every probe layer for every input.

        In-memory inputs (arrays or tensors, or a list/tuple/dict of them) run through the
        compiled predict function one slice of ``batch_size`` at a time (``predict_on_batch``):
        the same function on the same batches as ``predict`` (identical values), without the
        input pipeline ``predict`` builds on every call (~0.1 s with TensorFlow) or its per-step
        bookkeeping, so the probe costs no more than ``model.predict`` at any batch size
        (`bench/bench_probe.py`). Datasets, generators and ``PyDataset`` go through ``predict``,
        and so does everything under JAX, whose ``predict`` keeps batches in flight.

        Args:
            x: model inputs (array, tensor, list/dict for multi-input models, or a dataset that
                ``model.predict`` accepts).
            batch_size: forward-pass batch size (default 256; ignored for datasets).

        Returns:
            float32 array of shape (n, L).

        Raises:
            ValueError: inputs whose shape differs from the model's (`check_inputs`).
        """
        self.check_inputs(x)
        return np.asarray(_forward(self.sums_model, x, batch_size))

    def layer_sums_in_memory(self, x, batch_size: Optional[int] = None, outputs: bool = False):
        """`layer_sums`, or with ``outputs`` `layer_sums_and_outputs` (kept for callers of the
        former name; both take the same path)."""
        if outputs:
            return self.layer_sums_and_outputs(x, batch_size)
        return self.layer_sums(x, batch_size)

    @property
    def outputs_model(self) -> keras.Model:
        """The Keras model behind `layer_outputs` (built on first use): inputs -> the list of
        every probe layer's activation, in forward order."""
        if self._outputs_model is None:
            layer = _ProbeLayer(self.model, self._plan, None, self.num_layers,
                                self._softmax_last, name=f"{self.model.name}_probe_outputs")
            inputs = self._symbolic_inputs()
            outs = layer(inputs)
            self._outputs_model = keras.Model(inputs, list(outs),
                                              name=f"{self.model.name}_probe_outputs")
        return self._outputs_model

    def layer_outputs(self, x, batch_size: Optional[int] = None) -> Dict[str, np.ndarray]:
        """The unreduced activation of every probe layer, in the probe's mode.

        What ``keract.get_activations`` or one ``keras.Model(model.inputs, layer.output)`` per
        layer give, from one compiled forward pass in inference mode, for every probe layer:
        ``mode="pre"`` gives each layer's affine output before its fused activation (which no
        ``layer.output`` exposes), ``mode="post"`` its first nonlinearity (SPEC §1). Summed over
        all axes but the first, each array is the corresponding column of `layer_sums` (with
        ``reduce="sum"``; the mean with ``reduce="mean"``).

        Examples:
            >>> acts = cna_tf.ActivationProbe(model, mode="post").layer_outputs(x[:32])
            >>> {name: a.shape for name, a in acts.items()}

        Args:
            x: model inputs (as `layer_sums` takes them).
            batch_size: predict batch size (default 256; ignored for datasets).

        Returns:
            dict ``layer_name -> float32 array (n, *layer output shape)``, in the order of
            `layer_names`. Memory: n times every probe layer's activation size; for large n use
            `layer_sums`, which reduces in-graph.

        Raises:
            ValueError: inputs whose shape differs from the model's (`check_inputs`).
        """
        self.check_inputs(x)
        outs = _forward(self.outputs_model, x, batch_size)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return {name: np.asarray(a) for name, a in zip(self.layer_names, outs)}

    def layer_sums_and_outputs(self, x, batch_size: Optional[int] = None):
        """Layer sums and the model's outputs from one compiled forward pass.

        Args:
            x: model inputs (as `layer_sums` takes them; the same fast path for arrays).
            batch_size: forward-pass batch size (default 256; ignored for datasets).

        Returns:
            ``(sums, outputs)``: an (n, L) float32 array and the model's outputs as numpy.
        """
        self.check_inputs(x)
        sums, outputs = _forward(self.full_model, x, batch_size)
        return np.asarray(sums), outputs

    def __call__(self, x):
        """Symbolic/in-graph layer sums, differentiable in the model's weights: (batch, L)."""
        return self.sums_model(x, training=False)

    def __repr__(self) -> str:
        return (f"ActivationProbe(model={self.model.name!r}, mode={self.mode!r}, "
                f"reduce={self.reduce!r}, layers={self.layer_names})")


def _in_memory(x) -> bool:
    """Whether ``x`` is arrays/tensors (one, or a list/tuple/dict of them) of one length."""
    if isinstance(x, keras.utils.PyDataset) or hasattr(x, "element_spec"):
        return False
    leaves = keras.tree.flatten(x)
    if not leaves or not all(hasattr(a, "shape") and hasattr(a, "dtype")
                             and len(a.shape) >= 1 for a in leaves):
        return False
    return len({int(a.shape[0]) for a in leaves}) == 1


def _host_slice(a, start: int, stop: int):
    """Rows start:stop of one input, floats cast to floatx as ``predict``'s data adapter does."""
    part = a[start:stop]
    if isinstance(part, np.ndarray) and part.dtype.kind == "f" \
            and part.dtype != np.dtype(keras.backend.floatx()):
        part = part.astype(keras.backend.floatx())
    return part


def _forward(net: keras.Model, x, batch_size: Optional[int]):
    """``net``'s outputs for ``x`` as numpy: the probe's one forward-pass path.

    In-memory inputs: ``predict_on_batch`` on consecutive slices of ``batch_size`` (default
    256), concatenated; anything else (datasets, generators), and any input under JAX:
    ``net.predict``.

    Why JAX differs: its ``predict_on_batch`` copies each batch's result to the host before it
    returns, so one batch waits for the last, while its ``predict`` dispatches batch after batch
    and copies once at the end; on a GPU the per-batch path took 2-4x ``predict``'s time
    (docs/performance.md). TensorFlow's ``predict`` builds an input pipeline on every call
    (~0.1 s) and torch's runs slower per step than ``predict_on_batch``.
    """
    n = int(keras.tree.flatten(x)[0].shape[0]) if _in_memory(x) else 0
    if not n or keras.backend.backend() == "jax":
        return net.predict(x, batch_size=_batch(x, batch_size), verbose=0)
    size = max(1, int(batch_size or 256))
    parts = [net.predict_on_batch(keras.tree.map_structure(
        lambda a: _host_slice(a, i, i + size), x)) for i in range(0, n, size)]
    return keras.tree.map_structure(lambda *a: np.concatenate([np.asarray(v) for v in a]),
                                    *parts)


def _batch(x, batch_size: Optional[int]) -> Optional[int]:
    if batch_size is not None:
        return int(batch_size)
    if hasattr(x, "element_spec") or hasattr(x, "__next__") or isinstance(
            x, keras.utils.PyDataset):
        return None
    return 256


def graph_inputs(model: keras.Model) -> List[Any]:
    """The symbolic inputs of the layer graph the probe replays (a Sequential model's too).

    Raises:
        UntraceableModelError: an unbuilt model or an untraceable ``call()`` (see
            `ActivationProbe`).
    """
    return list(layer_graph(model).inputs)


def ones_inputs(model: keras.Model) -> List[Any]:
    """One all-ones example per input of the model's layer graph, in its dtype (the path norm's
    input, SPEC §2 and §12).

    Raises:
        ValueError: an input with an undefined dimension besides the batch.
    """
    inputs = []
    for t in graph_inputs(model):
        shape = (1,) + tuple(t.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(f"input '{t.name}' has an undefined dimension {tuple(t.shape)}; "
                             "an all-ones input needs a fixed input shape")
        inputs.append(keras.ops.ones(shape, dtype=t.dtype))
    return inputs


def replay(model: keras.Model, inputs: Sequence[Any], mode: str = "pre",
           training: bool = False) -> Tuple[List[Any], Any]:
    """Runs ``model``'s layer graph on backend tensors, keeping every probe layer's activation.

    The eager, unreduced, dtype-preserving form of the probe (no Keras model is built, no cast
    to float32): e.g. the float64 squared-weight copy of the path norm reads its classifier's
    affine output from it.

    Args:
        model: a Functional, Sequential or subclassed model (nested models are expanded).
        inputs: one tensor per input of `graph_inputs(model)`, in that order.
        mode: ``"pre"`` or ``"post"``, as in `ActivationProbe`.
        training: the training flag passed to every layer.

    Returns:
        ``(values, outputs)``: the activation of every probe layer in forward order, the
        classifier included, and the model's outputs.
    """
    return _Plan(model, mode).run(list(inputs), training=training)


def named_affine_layers(model: keras.Model, include_output: bool = True
                        ) -> List[Tuple[str, keras.layers.Layer]]:
    """``(probe name, layer)`` of every call of every probe layer of ``model`` (SPEC §1).

    The names are those of `ActivationProbe.layer_names`: ``outer/inner`` inside nested models,
    ``name@k`` for the k-th repeated call of a shared layer. Used by the norm-based baselines,
    which run over every weighted layer, the classifier included.
    """
    named = [(p.name, p.layer) for p in _Plan(model, "pre").probes]
    return named if include_output else named[:-1]


def affine_layers(model: keras.Model, include_output: bool = True) -> List[keras.layers.Layer]:
    """The probe layers of ``model`` in forward order (SPEC §1), the classifier included.

    Used by the norm-based baselines, which run over every weighted layer.
    """
    return [layer for _, layer in named_affine_layers(model, include_output)]
