"""Per-op converters of the ONNX front end, registered by (domain, op_type, since_version).

Each converter receives an :class:`~snnconvert.convert.onnx_ops.context.OpContext` for one ONNX node and returns one
value per node output. Values come in three kinds:

- :class:`Const`: a tensor known at import time (initializers, ``Constant`` nodes, anything folded from them);
- :class:`SymVec`: a 0-d or 1-d int64 "shape tensor" whose entries are sympy expressions of the input's dynamic
  dimensions (``Shape(x)`` of a ``[batch, 3, 224, 224]`` tensor is ``SymVec((batch, 3, 224, 224))``);
- :class:`Tensor`: an fx node computed at run time, with its shape as sympy expressions where known.

Shape sub-graphs (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` and friends) are therefore evaluated while
importing: a ``Reshape`` receives a target shape such as ``(batch, 768, 196)`` and emits ``reshape(x, [-1, 768, 196])``,
so the module keeps working for any batch size, including a ``[T*B, ...]`` input. Only when more than one entry of a
target shape is dynamic does the graph read ``x.size(i)`` at run time.

Weights become real modules (``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d``, ``nn.LayerNorm``, ...) so the passes
see the same graph as from ``torch.fx`` tracing; element-wise ops become ``call_function`` nodes on ``operator`` /
``torch`` functions, the same targets that tracing produces.

Converters raise ``ctx.unsupported(reason)`` for an attribute combination they cannot express (collected with the
unknown ops into one ``UnsupportedOpError``) and ``ctx.fail(message)`` (``OnnxImportError``) for a malformed model or
a dynamic shape that cannot be resolved.

What each op becomes (default domain, opsets 13-21):

=====================================================  ==============================================================
ONNX                                                   fx
=====================================================  ==============================================================
Conv / ConvTranspose (1-3 d)                           ``nn.ConvNd`` / ``nn.ConvTransposeNd`` (+ ``F.pad`` or a crop
                                                       for asymmetric pads)
Gemm, MatMul with a constant 2-d weight                ``nn.Linear`` (a following ``Add`` of a constant bias is
                                                       absorbed); otherwise ``torch.matmul``
BatchNormalization, LayerNormalization                 ``nn.BatchNormNd`` (eval), ``nn.LayerNorm``
InstanceNormalization, LRN                             ``F.instance_norm`` (``F.group_norm`` on run-time sizes),
                                                       ``nn.LocalResponseNorm``
MaxPool, AveragePool, GlobalAveragePool/MaxPool        ``nn.MaxPoolNd``, ``nn.AvgPoolNd``,
                                                       ``nn.AdaptiveAvgPoolNd(1)`` / ``nn.AdaptiveMaxPoolNd(1)``
                                                       (SAME pads on run-time sizes: ``F.pad`` computed then)
ReduceMean over all spatial axes                       ``nn.AdaptiveAvgPoolNd(1)``
ReduceL1 / L2 / SumSquare / LogSum / LogSumExp         ``torch.linalg.vector_norm``, square + sum, sum + log,
                                                       ``torch.logsumexp``
Relu, Clip [0, 6] / [0, inf), LeakyRelu, Sigmoid,      ``nn.ReLU``, ``nn.ReLU6`` / ``nn.ReLU``, ``nn.LeakyReLU``,
Tanh, Gelu, Softmax, LogSoftmax, HardSwish, Elu, ...   ``nn.Sigmoid``, ``nn.Tanh``, ``nn.GELU``, ``nn.Softmax``, ...
Add, Sub, Mul, Div, Pow, comparisons                   ``operator.add`` & co. (constants: scalars or buffers)
Sqrt, Erf, Exp, Where, Max, Min, Mod, Cast, ...        ``torch.sqrt`` & co., ``x.to(dtype)``
Reshape, Flatten, Transpose, Concat, Split, Slice,     ``torch.reshape`` (``-1`` for the dynamic entry),
Squeeze, Unsqueeze, Pad, Expand, Tile, Gather,        ``torch.flatten``, ``torch.permute``, ``torch.cat``, slicing, ...
GatherND (constant indices)                            (GatherND: ``torch.index_select`` of flattened leading dims)
Resize (spatial dims; nearest asymmetric + floor,      ``F.interpolate`` (``mode``, ``align_corners``, ``size`` or
linear / cubic half-pixel or align-corners)            ``scale_factor``)
Resize, other modes on static sizes                    per axis ``torch.index_select`` of the source positions
                                                       (weighted and summed for linear / cubic)
If with a condition known at import                    the nodes of the branch taken
Shape, Size, ConstantOfShape, Range, Constant          evaluated while importing (no fx node); ConstantOfShape /
                                                       Range of a dynamic size: ``torch.full`` / ``torch.arange``
Identity, Dropout (inference)                          nothing: the input is passed through
=====================================================  ==============================================================

A file at another opset is converted to 13 or 21 by ``onnx.version_converter`` before these run
(``onnx_model.convert_opset``; its Resize nodes made from Upsample and Resize-10 keep their asymmetric sampling).

The converters live in ``core`` (values, registry, shared helpers), ``layers`` (weights), ``pooling``, ``elementwise``
(activations, element-wise ops, casts), ``shapes`` (pass-throughs, constants, shape manipulation, reductions) and
``spatial`` (DepthToSpace / SpaceToDepth, Pad, Resize);
importing this package registers all of them.
"""
from __future__ import annotations

from snnconvert.convert.onnx_ops import elementwise, layers, pooling, shapes, spatial  # noqa: F401 - registers them
from snnconvert.convert.onnx_ops.core import (
    DEFAULT_DOMAIN,
    Const,
    SymVec,
    Tensor,
    UnsupportedConfigError,
    Value,
    lookup,
    register,
    supported_op_types,
    sym_div,
    to_int_list,
)

__all__ = ["DEFAULT_DOMAIN", "Const", "SymVec", "Tensor", "UnsupportedConfigError", "Value", "lookup", "register",
           "supported_op_types", "sym_div", "to_int_list"]
