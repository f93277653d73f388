"""ONNX plumbing shared by the op folders: schema registration and a FunctionProto body builder.

Each op's schema.py / function.py / export.py uses these; plugins/onnx_ops.py is the facade.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import onnx
from onnx import AttributeProto, TensorProto, helper
from onnx.defs import OpSchema

from sparsefuse.plugins.common import DOMAIN, OPSET_VERSION

FLOAT_TYPES = ["tensor(float)", "tensor(float16)"]
INT32 = "tensor(int32)"

# Bodies use ReduceMax/Squeeze with axes as inputs and ScatterND(reduction="add"): opset 18+.
MIN_BODY_OPSET = 18

_ATTR_TYPES = {
    "INT": OpSchema.AttrType.INT,
    "INTS": OpSchema.AttrType.INTS,
    "FLOAT": OpSchema.AttrType.FLOAT,
    "FLOATS": OpSchema.AttrType.FLOATS,
    "STRING": OpSchema.AttrType.STRING,
}


@dataclass(frozen=True)
class AttrSpec:
    """One typed attribute; ``default`` None means required."""

    name: str
    kind: str  # "INT" | "INTS" | "FLOAT" | "FLOATS" | "STRING"
    doc: str
    default: object = None

    def to_schema(self) -> OpSchema.Attribute:
        if self.default is None:
            return OpSchema.Attribute(self.name, _ATTR_TYPES[self.kind], self.doc, required=True)
        return OpSchema.Attribute(self.name, helper.make_attribute(self.name, self.default), self.doc)


Dim = int | str | None  # static size, symbolic name, or unknown
OutputType = tuple[int, list[Dim] | None]  # (TensorProto elem type, dims or None for unknown rank)


class ShapeContext:
    """What an output-type rule sees of a node: input element types and dims, attribute values."""

    def __init__(self, ctx, spec: OpSpec) -> None:
        self._ctx = ctx
        self._spec = spec
        self._index = {name: i for i, (name, _) in enumerate(spec.inputs)}

    def elem(self, name: str) -> int:
        i = self._index[name]
        if i >= self._ctx.get_num_inputs() or not self._ctx.has_input(i):
            return TensorProto.UNDEFINED
        return self._ctx.get_input_type(i).tensor_type.elem_type

    def dims(self, name: str) -> list[Dim] | None:
        i = self._index[name]
        if i >= self._ctx.get_num_inputs() or not self._ctx.has_input(i):
            return None
        tensor_type = self._ctx.get_input_type(i).tensor_type
        if not tensor_type.HasField("shape"):
            return None
        return [
            d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
            for d in tensor_type.shape.dim
        ]

    def dim(self, name: str, axis: int) -> Dim:
        dims = self.dims(name)
        return None if dims is None or len(dims) <= abs(axis) - (axis < 0) else dims[axis]

    def attr(self, name: str) -> object:
        proto = self._ctx.get_attribute(name)
        return self._spec.attribute(name).default if proto is None else helper.get_attribute_value(proto)


def _inference_function(spec: OpSpec) -> Callable:
    def infer(ctx) -> None:
        for i, (elem, dims) in enumerate(spec.infer(ShapeContext(ctx, spec))):
            if i < ctx.get_num_outputs() and ctx.has_output(i) and elem != TensorProto.UNDEFINED:
                ctx.set_output_type(i, helper.make_tensor_type_proto(elem, dims))

    return infer


@dataclass(frozen=True)
class OpSpec:
    """Everything an ONNX schema of one of our ops says: (name, type string) per input/output."""

    op_type: str
    doc: str
    inputs: Sequence[tuple[str, str]]
    outputs: Sequence[tuple[str, str]]
    attributes: Sequence[AttrSpec]
    optional_inputs: frozenset[str] = field(default_factory=frozenset)
    # Output types and shapes from the inputs; without it, a registered schema would hide the
    # model-local function from ONNX shape inference and leave our outputs untyped.
    infer: Callable[[ShapeContext], list[OutputType]] | None = None

    def to_schema(self) -> OpSchema:
        def param(name: str, type_str: str) -> OpSchema.FormalParameter:
            option = (
                OpSchema.FormalParameterOption.Optional
                if name in self.optional_inputs
                else OpSchema.FormalParameterOption.Single
            )
            return OpSchema.FormalParameter(name, type_str, "", param_option=option)

        schema = OpSchema(
            self.op_type,
            DOMAIN,
            OPSET_VERSION,
            doc=self.doc,
            inputs=[param(n, t) for n, t in self.inputs],
            outputs=[param(n, t) for n, t in self.outputs],
            type_constraints=[("T", FLOAT_TYPES, "feature element type")],
            attributes=[a.to_schema() for a in self.attributes],
        )
        if self.infer is not None:
            schema.set_type_and_shape_inference_function(_inference_function(self))
        return schema

    def attribute(self, name: str) -> AttrSpec:
        return next(a for a in self.attributes if a.name == name)


def custom_op(spec: OpSpec):
    """The onnxscript op ``sparsefuse::<op_type>`` for a translation; registers the schema first
    (the exporter looks the op up in onnx.defs).

    onnxscript is imported here, not at module level: it costs ~1 s and only export needs it.
    """
    import onnxscript

    register(spec)
    return getattr(onnxscript.values.Opset(DOMAIN, OPSET_VERSION), spec.op_type)


def register(spec: OpSpec) -> OpSchema:
    """Register the schema with onnx.defs once; later calls return the registered one."""
    if not onnx.defs.has(spec.op_type, DOMAIN):
        onnx.defs.register_schema(spec.to_schema())
    return onnx.defs.get_schema(spec.op_type, OPSET_VERSION, DOMAIN)


_REF_CONSTANT_FIELD = {
    "INT": ("value_int", AttributeProto.INT),
    "INTS": ("value_ints", AttributeProto.INTS),
    "FLOAT": ("value_float", AttributeProto.FLOAT),
    "FLOATS": ("value_floats", AttributeProto.FLOATS),
    "STRING": ("value_string", AttributeProto.STRING),
}


class FunctionBuilder:
    """Accumulates the nodes of one FunctionProto body and names its intermediate values."""

    def __init__(self, spec: OpSpec) -> None:
        self.spec = spec
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def _fresh(self, hint: str) -> str:
        self._count += 1
        return f"_{hint.lower()}_{self._count}"

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs: object) -> str | tuple[str, ...]:
        outs = [self._fresh(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else tuple(outs)

    def attr(self, name: str) -> str:
        """A Constant holding the value of the function attribute ``name`` (a ref_attr_name)."""
        kind = self.spec.attribute(name).kind
        field_name, attr_type = _REF_CONSTANT_FIELD[kind]
        out = self._fresh(name)
        node = helper.make_node("Constant", [], [out])
        node.attribute.append(helper.make_attribute_ref(field_name, attr_type, ref_attr_name=name))
        self.nodes.append(node)
        return out

    def const(
        self, values: Sequence[int] | Sequence[float] | int | float, dtype: int = TensorProto.INT64
    ) -> str:
        """A constant tensor: a list gives a 1-D tensor, a scalar a 0-D one."""
        scalar = not isinstance(values, list | tuple)
        vals = [values] if scalar else list(values)
        tensor = helper.make_tensor("value", dtype, [] if scalar else [len(vals)], vals)
        return self.op("Constant", value=tensor)

    def const_string(self, value: str) -> str:
        """A [1] string tensor."""
        return self.op(
            "Constant", value=helper.make_tensor("value", TensorProto.STRING, [1], [value.encode()])
        )

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int]) -> str:
        return self.op("Slice", x, self.const(list(starts)), self.const(list(ends)), self.const(list(axes)))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", x, self.const(list(axes)))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Squeeze", x, self.const(list(axes)))

    def dim(self, x: str, axis: int) -> str:
        """Size of ``x`` along ``axis`` as a [1] int64 tensor."""
        end = axis + 1 if axis != -1 else None
        return self.op("Shape", x, start=axis) if end is None else self.op("Shape", x, start=axis, end=end)

    def segment_sums(self, rows: str, starts: str, ends: str) -> str:
        """Sums [S, C] float64 of row segments of ``rows`` [N, C]: segment s spans rows
        [starts[s], ends[s]) (``starts``, ``ends`` [S] int64, 0 <= start <= end <= N).

        A float64 prefix sum and two Gathers instead of ScatterND(reduction="add"): ORT's CPU
        ScatterND adds duplicate indices from several threads without atomics, so its result
        changes from run to run (microsoft/onnxruntime#23396); this is deterministic.
        """
        prefix = self.op("CumSum", self.op("Cast", rows, to=TensorProto.DOUBLE), self.const(0))
        zero_row = self.op(
            "ConstantOfShape",
            self.op("Concat", self.const([1]), self.dim(rows, 1), axis=0),
            value=helper.make_tensor("value", TensorProto.DOUBLE, [1], [0.0]),
        )
        padded = self.op("Concat", zero_row, prefix, axis=0)  # padded[k] = sum of the first k rows
        upto_end = self.op("Gather", padded, ends, axis=0)
        return self.op("Sub", upto_end, self.op("Gather", padded, starts, axis=0))

    def zeros_like_type(self, shape: str, like: str) -> str:
        """Zeros of ``shape`` ([k] int64) with the element type of ``like``."""
        return self.op("CastLike", self.op("ConstantOfShape", shape), like)

    def build(self, outputs: Sequence[str], opset: int) -> onnx.FunctionProto:
        """Rename the final values to the formal outputs and return the FunctionProto."""
        formal = [name for name, _ in self.spec.outputs]
        nodes = list(self.nodes)
        for value, name in zip(outputs, formal, strict=True):
            nodes.append(helper.make_node("Identity", [value], [name]))
        required = [a.name for a in self.spec.attributes if a.default is None]
        defaults = [
            helper.make_attribute(a.name, a.default) for a in self.spec.attributes if a.default is not None
        ]
        return helper.make_function(
            DOMAIN,
            self.spec.op_type,
            inputs=[name for name, _ in self.spec.inputs],
            outputs=formal,
            nodes=nodes,
            opset_imports=[helper.make_opsetid("", opset)],
            attributes=required,
            attribute_protos=defaults,
            doc_string=f"{self.spec.op_type} in standard ONNX ops (slow, exact); see the op's reference.py.",
        )
