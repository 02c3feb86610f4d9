"""Small building blocks of the ConvNeXt backbone."""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor.

    The tensor is viewed as NHWC (a permute, no copy for channels_last input)
    so that PyTorch's fused ``layer_norm`` kernel does the work instead of a
    hand-written mean/variance. Under autocast ``layer_norm`` runs in fp32 and
    returns fp32, as in the reference implementations; a model cast to half
    precision (no autocast) normalises in fp32 too and casts the result back.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        if x.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled(
                x.device.type):
            y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                             self.bias.float(), self.eps).to(x.dtype)
        else:
            y = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization of ConvNeXt V2, on NHWC tensors.

    ``gamma`` and ``beta`` keep the (1, 1, 1, C) shape of the official V2
    checkpoints so that those load unchanged.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


def stochastic_depth_factor(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Per-sample factor of a residual branch under stochastic depth, shaped to broadcast
    over ``x``: 0 where the branch is dropped, ``1 / keep_prob`` where it is kept."""
    keep_prob = 1 - drop_prob
    factor = x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep_prob)
    return factor.div_(keep_prob)


# oneDNN's linear kernels stand in for PyTorch's matrix products (MKL's on x86) only on CPUs
# where ATen runs AVX-512 code: they were faster there (an AMD EPYC Zen 4: 1.2-1.7x MKL's `mm`
# per op, 1.04-1.10x per training step) and slower on an AVX2 CPU (an AMD EPYC Zen 3: 0.81-0.86x
# per inference step, 0.91-0.94x per training step). Read once: torch.compile does not trace
# into torch.backends' checks. ATEN_CPU_CAPABILITY=avx2 switches the kernels off.
ONEDNN_LINEAR_AVAILABLE = (torch.backends.mkldnn.is_available()
                           and not torch.ops.mkldnn._is_mkldnn_acl_supported())
USE_ONEDNN_LINEAR = ONEDNN_LINEAR_AVAILABLE and torch.backends.cpu.get_cpu_capability() == 'AVX512'


def _fp32_cpu(x: torch.Tensor) -> bool:
    """fp32 on a CPU, no autocast, not tracing (FLOP counters and ONNX export see the plain
    layers)."""
    return (x.is_cpu and x.dtype == torch.float32 and not torch.is_autocast_enabled('cpu')
            and not torch.jit.is_tracing())


def _onednn_fp32_cpu(x: torch.Tensor) -> bool:
    """``_fp32_cpu`` where oneDNN's linear kernels pay (``USE_ONEDNN_LINEAR``) and oneDNN is
    enabled."""
    return USE_ONEDNN_LINEAR and torch.backends.mkldnn.enabled and _fp32_cpu(x)


def cpu_inference(x: torch.Tensor, *modules_or_tensors) -> bool:
    """fp32 on a CPU (``_fp32_cpu``) and nothing that autograd records: ``x``, the modules'
    parameters and the other tensors given need no gradient, or grad mode is off."""
    if not _fp32_cpu(x):
        return False
    if not torch.is_grad_enabled():
        return True
    tensors = [x]
    for item in modules_or_tensors:
        if isinstance(item, nn.Module):
            tensors.extend(item.parameters())
        elif item is not None:
            tensors.append(item)
    return not any(t.requires_grad for t in tensors)


def onednn_inference(x: torch.Tensor, *modules_or_tensors) -> bool:
    """Whether oneDNN's fused linear kernels (``torch.ops.mkldnn._linear_pointwise``, the ones
    inductor uses on the CPU) can stand in for Linear + GELU or Linear + add: where they pay
    (``_onednn_fp32_cpu``) and nothing is recorded for autograd (``cpu_inference``)."""
    return _onednn_fp32_cpu(x) and cpu_inference(x, *modules_or_tensors)


def onednn_training(x: torch.Tensor) -> bool:
    """Whether a Linear layer whose forward autograd records can run oneDNN's linear kernel
    (``onednn_linear``): fp32 on a CPU with oneDNN (``_onednn_fp32_cpu``)."""
    return torch.is_grad_enabled() and _onednn_fp32_cpu(x)


def mlp_function_training(x: torch.Tensor, *modules_or_tensors) -> bool:
    """fp32 CPU training where ``mlp_training`` stands in for Linear -> GELU -> Linear:
    autograd records (not ``cpu_inference``), in eager mode or, on oneDNN's kernels
    (``_onednn_fp32_cpu``), compiled too."""
    return (_fp32_cpu(x) and not cpu_inference(x, *modules_or_tensors)
            and (not torch.compiler.is_compiling() or _onednn_fp32_cpu(x)))


def _onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                    residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ weight.t() [+ bias] [+ residual]`` on oneDNN's linear kernel, the residual added
    inside it (the binary variant)."""
    if residual is None:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'none', [], '')
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, 'add')


# The oneDNN kernels are custom ops so that torch.compile keeps them as they are: inductor
# lowers oneDNN's linear only for constant (frozen) weights, runs trainable Linear layers on
# MKL's matrix products, and PyTorch has no fake-tensor kernel for the binary variant.
@torch.library.custom_op('convnext_mm::linear_gelu', mutates_args=())
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias))`` (exact erf GELU) as one oneDNN kernel; no autograd
    formula (inference only)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'gelu', [None], 'none')


@torch.library.custom_op('convnext_mm::linear', mutates_args=())
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
           residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias) [+ residual]`` as one oneDNN kernel, with an autograd formula.

    ``F.linear`` on the CPU is ``addmm``, which first copies the bias into every row of its
    output and then accumulates the product onto it; oneDNN adds the bias (and the residual)
    inside the product kernel. Its autograd formula (``_linear_backward``) takes 2-D tensors
    (``onednn_linear``).
    """
    return _onednn_product(x, weight, bias, residual)


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, use_onednn: bool,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``grad @ weight`` (a Linear layer's input gradient): on oneDNN's linear kernel on the
    transposed weight (a view: oneDNN reorders the weight anyway), on the CPUs measured faster
    than ``mm`` (MKL), a new tensor; else ``mm``, into ``out`` if given."""
    if use_onednn:
        return _onednn_product(grad, weight.t())
    return torch.mm(grad, weight, out=out)


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, use_onednn: bool) -> torch.Tensor:
    """``grad.t() @ x`` (a Linear layer's weight gradient, out x in). On oneDNN's linear kernel
    the product runs on transposed views, the narrower of the two widths first: on a Zen 5
    1.0-2.2x MKL's ``mm`` at a ConvNeXt-T step's shapes, where the wider width first ran up to
    4x slower. Where the input is the narrower (pwconv1), the product is ``x.t() @ grad``,
    transposed into the weight's layout (autograd would otherwise make that copy)."""
    if not use_onednn:
        return grad.t().mm(x)
    if x.shape[0] == 0:  # oneDNN has no product over an empty dimension
        return grad.new_zeros(grad.shape[1], x.shape[1])
    if grad.shape[1] <= x.shape[1]:
        return _onednn_product(grad.t(), x.t())
    return _onednn_product(x.t(), grad.t()).t().contiguous()


@torch.library.custom_op('convnext_mm::linear_input_grad', mutates_args=())
def linear_input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``_input_grad`` on oneDNN's kernel."""
    return _input_grad(grad, weight, use_onednn=True)


@torch.library.custom_op('convnext_mm::linear_weight_grad', mutates_args=())
def linear_weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``_weight_grad`` on oneDNN's kernel."""
    return _weight_grad(grad, x, use_onednn=True)


@linear_gelu.register_fake
@linear.register_fake
def _linear_fake(x, weight, bias, residual=None):
    return x.new_empty(x.shape[:-1] + weight.shape[:1])


@linear_input_grad.register_fake
def _linear_input_grad_fake(grad, weight):
    return grad.new_empty(grad.shape[:-1] + weight.shape[1:])


@linear_weight_grad.register_fake
def _linear_weight_grad_fake(grad, x):
    return grad.new_empty(grad.shape[1], x.shape[1])


def _linear_setup_context(ctx, inputs, output):
    x, weight, _, residual = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_residual = residual is not None


def _linear_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x = linear_input_grad(grad, weight) if ctx.needs_input_grad[0] else None
    grad_weight = linear_weight_grad(grad, x) if ctx.needs_input_grad[1] else None
    grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
    return grad_x, grad_weight, grad_bias, grad if ctx.has_residual else None


linear.register_autograd(_linear_backward, setup_context=_linear_setup_context)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The ``linear`` op on the last dimension of ``x`` (and ``residual``)."""
    # The op sees 2-D tensors: oneDNN returns N-D outputs as views, and autograd forbids
    # in-place ops on views made inside an op with its own backward (the block adds in place).
    rows = x.reshape(-1, x.shape[-1])
    residual_rows = None if residual is None else residual.reshape(-1, residual.shape[-1])
    out = linear(rows, weight, bias, residual_rows)
    return out.view(*x.shape[:-1], out.shape[-1])


def _graph_kept() -> bool:
    """Whether the running backward pass keeps the graph for another one (``retain_graph``);
    True where this PyTorch cannot tell."""
    keep_graph = getattr(torch._C._autograd, '_get_current_graph_task_keep_graph', None)
    return True if keep_graph is None else keep_graph()


# A block's hidden (4C-wide) tensor above this many values (32 MiB, where glibc maps fresh
# pages for every allocation) is not made whole on the CPU: inference on oneDNN's kernels
# runs the block's tail in row chunks, eager or compiled (convnext.py; on PyTorch's products it
# always does), and the training MLP keeps no GELU output, computing it again in chunks of about
# MLP_TRAINING_CHUNK_NUMEL values (8 MiB), which stay in cache.
MLP_CHUNK_ABOVE_NUMEL = 2 ** 23
MLP_TRAINING_CHUNK_NUMEL = 2 ** 21


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, use_onednn: bool,
             residual: Optional[torch.Tensor] = None,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ weight.t() + bias [+ residual]``: on oneDNN's linear kernel (bias and residual
    added inside it) a new tensor, copied into ``out`` if given; else ``addmm``, into ``out``."""
    if use_onednn:
        result = _onednn_product(x, weight, bias, residual)
        return result if out is None else out.copy_(result)
    result = torch.addmm(bias, x, weight.t(), out=out)
    return result if residual is None else result.add_(residual)


class _MLPFunction(torch.autograd.Function):
    """``F.linear(F.gelu(F.linear(x, weight1, bias1)), weight2, bias2) [+ residual]`` on 2-D
    ``x`` whose backward makes as few new hidden-sized (4C-wide) tensors as it can, with its
    products on oneDNN's linear kernel (``use_onednn``) or PyTorch's.

    PyTorch's backward of these layers makes two: the gradient of GELU's output (a product)
    and of its input (``gelu_backward``). On the CPU each is fresh memory that the kernel maps
    and zeroes (over 32 MiB glibc maps new pages for every allocation). Here ``gelu_backward``
    writes in place over the product (a new tensor on oneDNN's kernel, which has no output
    argument) or, on PyTorch's products, both write over the GELU output this function saved,
    which nothing else holds and which is dead once pwconv2's weight gradient is computed; not
    when the graph is kept for another backward pass (``retain_graph``): then new tensors, as
    PyTorch makes them. A large hidden tensor's GELU output is not kept at all: the forward and
    the backward run GELU and everything after it in row chunks (``_chunked_forward``,
    ``_chunked_backward``), which also saves a hidden-sized tensor of memory per block. When the
    backward is differentiated (``create_graph``): the gradients of a recomputed forward, since
    the tensors made in ``forward`` carry no graph.
    """

    @staticmethod
    def forward(ctx, x, weight1, bias1, weight2, bias2, residual, use_onednn):
        out, hidden, activation = _mlp_forward(x, weight1, bias1, weight2, bias2, residual,
                                               use_onednn, _mlp_chunked(x, weight1))
        ctx.use_onednn = use_onednn
        ctx.save_for_backward(x, weight1, bias1, weight2, hidden,
                              *([] if activation is None else [activation]))
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight1, bias1, weight2, hidden, *activation = ctx.saved_tensors
        needs, use_onednn = ctx.needs_input_grad, ctx.use_onednn
        grad_residual = grad if needs[5] else None
        if torch.is_grad_enabled():
            inputs, grads = (x, weight1, bias1, weight2), [None] * 4
            wanted = [i for i in range(4) if needs[i]]
            if wanted:
                out = F.linear(F.gelu(F.linear(x, weight1, bias1)), weight2)
                found = torch.autograd.grad(out, [inputs[i] for i in wanted], grad,
                                            create_graph=True)
                for i, found_grad in zip(wanted, found):
                    grads[i] = found_grad
            return (*grads, grad.sum(0) if needs[4] else None, grad_residual, None)
        activation = activation[0] if activation else None
        reuse = activation is not None and not use_onednn and not _graph_kept()
        grads = _mlp_backward(grad, x, weight1, weight2, hidden, activation, needs[:5],
                              use_onednn, reuse)
        return (*grads, grad_residual, None)


def _mlp_chunked(x: torch.Tensor, weight1: torch.Tensor) -> bool:
    """Whether the MLP's hidden tensor is large enough to run GELU in chunks."""
    return x.shape[0] * weight1.shape[0] > MLP_CHUNK_ABOVE_NUMEL


def _mlp_forward(x, weight1, bias1, weight2, bias2, residual, use_onednn, chunked):
    """(the MLP's output, pwconv1's output, GELU's output or, ``chunked``, None: GELU runs in
    chunks)."""
    hidden = _product(x, weight1, bias1, use_onednn)
    if chunked:
        return _chunked_forward(hidden, weight2, bias2, residual, use_onednn), hidden, None
    activation = F.gelu(hidden)
    return _product(activation, weight2, bias2, use_onednn, residual), hidden, activation


def _mlp_backward(grad, x, weight1, weight2, hidden, activation, needs, use_onednn, reuse):
    """The gradients of x, weight1, bias1, weight2 and bias2 where ``needs`` says (None
    elsewhere), from ``_mlp_forward``'s tensors; ``reuse``: the hidden gradient may be written
    over the GELU output (on PyTorch's products, where the graph is not kept)."""
    grad_bias2 = grad.sum(0) if needs[4] else None
    if activation is None:
        return (*_chunked_backward(grad, x, weight1, weight2, hidden, needs, use_onednn),
                grad_bias2)
    grad_weight2 = _weight_grad(grad, activation, use_onednn) if needs[3] else None
    grad_hidden = _input_grad(grad, weight2, use_onednn, out=activation if reuse else None)
    torch.ops.aten.gelu_backward.grad_input(grad_hidden, hidden, grad_input=grad_hidden)
    grad_x = _input_grad(grad_hidden, weight1, use_onednn) if needs[0] else None
    grad_weight1 = _weight_grad(grad_hidden, x, use_onednn) if needs[1] else None
    grad_bias1 = grad_hidden.sum(0) if needs[2] else None
    return grad_x, grad_weight1, grad_bias1, grad_weight2, grad_bias2


# The MLP function on oneDNN's kernels as custom ops, for compiled training: dynamo would trace
# into the autograd function, and inductor runs trainable Linear layers on MKL's products.
@torch.library.custom_op('convnext_mm::onednn_mlp', mutates_args=())
def onednn_mlp(x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor,
               weight2: torch.Tensor, bias2: torch.Tensor, residual: Optional[torch.Tensor],
               chunked: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_mlp_forward`` on oneDNN's kernel: (output, pwconv1's output, GELU's output, with no
    rows where GELU runs in chunks)."""
    out, hidden, activation = _mlp_forward(x, weight1, bias1, weight2, bias2, residual, True,
                                           chunked)
    return out, hidden, x.new_empty(0, hidden.shape[1]) if activation is None else activation


@torch.library.custom_op('convnext_mm::onednn_mlp_backward', mutates_args=())
def onednn_mlp_backward(grad: torch.Tensor, x: torch.Tensor, weight1: torch.Tensor,
                        weight2: torch.Tensor, hidden: torch.Tensor, activation: torch.Tensor,
                        chunked: bool, needs: List[bool]) -> List[torch.Tensor]:
    """``_mlp_backward`` on oneDNN's kernel; tensors with no values for the gradients not
    needed (an op returns no None)."""
    grads = _mlp_backward(grad, x, weight1, weight2, hidden, None if chunked else activation,
                          needs, True, reuse=False)
    return [_no_values(shape, x) if g is None else g
            for g, shape in zip(grads, _mlp_grad_shapes(x, weight1, weight2))]


def _mlp_grad_shapes(x, weight1, weight2):
    return [x.shape, weight1.shape, weight1.shape[:1], weight2.shape, weight2.shape[:1]]


def _no_values(shape, like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0, ) * len(shape))


@onednn_mlp.register_fake
def _onednn_mlp_fake(x, weight1, bias1, weight2, bias2, residual, chunked):
    hidden = x.new_empty(x.shape[0], weight1.shape[0])
    return (x.new_empty(x.shape[0], weight2.shape[0]), hidden,
            x.new_empty(0, hidden.shape[1]) if chunked else torch.empty_like(hidden))


@onednn_mlp_backward.register_fake
def _onednn_mlp_backward_fake(grad, x, weight1, weight2, hidden, activation, chunked, needs):
    return [x.new_empty(shape) if need else _no_values(shape, x)
            for shape, need in zip(_mlp_grad_shapes(x, weight1, weight2), needs)]


def _onednn_mlp_setup_context(ctx, inputs, output):
    x, weight1, _, weight2, _, residual, ctx.chunked = inputs
    _, hidden, activation = output
    ctx.save_for_backward(x, weight1, weight2, hidden, activation)
    ctx.has_residual = residual is not None


def _onednn_mlp_backward(ctx, grad, *_):
    x, weight1, weight2, hidden, activation = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:5])
    grads = onednn_mlp_backward(grad, x, weight1, weight2, hidden, activation, ctx.chunked,
                                needs)
    return (*[g if need else None for g, need in zip(grads, needs)],
            grad if ctx.has_residual else None, None)


onednn_mlp.register_autograd(_onednn_mlp_backward, setup_context=_onednn_mlp_setup_context)


def row_chunks(num_rows: int, chunk_rows: int, buffer_width: Optional[int],
               like: torch.Tensor):
    """Slices of ``chunk_rows`` of ``num_rows`` rows (the last one shorter), each with as many
    rows of one buffer, ``buffer_width`` values wide, of ``like``'s type and device, which
    every chunk reuses (None for no width)."""
    buffer = None if buffer_width is None else like.new_empty(min(chunk_rows, num_rows),
                                                              buffer_width)
    for start in range(0, num_rows, chunk_rows):
        stop = min(start + chunk_rows, num_rows)
        yield slice(start, stop), None if buffer is None else buffer[:stop - start]


# A custom op so that torch.compile keeps the chunk loop (inductor would otherwise make every
# hidden tensor whole) and writes in place over the rows (inductor reinplaces the op's copy).
@torch.library.custom_op('convnext_mm::inference_tail_', mutates_args=('rows', ))
def inference_tail_(rows: torch.Tensor, shortcut: torch.Tensor, norm_weight: torch.Tensor,
                    norm_bias: torch.Tensor, eps: float, weight1: torch.Tensor,
                    bias1: torch.Tensor, weight2: torch.Tensor, bias2: torch.Tensor,
                    scale: Optional[torch.Tensor], chunk_rows: int, use_onednn: bool) -> None:
    """``rows = shortcut + scale * linear(gelu(linear(layer_norm(rows), weight1, bias1)),
    weight2, bias2)`` in place on 2-D (pixels x channels) tensors, ``chunk_rows`` rows at a time,
    no autograd (inference only).

    On PyTorch's products every chunk's hidden values go into one buffer, whose pages are mapped
    once per call and stay in cache for GELU and the second product, and that product is written
    straight into the chunk's rows; the scale is applied in the shortcut add (no scale: 1). With
    ``use_onednn`` (no scale: it must be folded into ``weight2`` and ``bias2``) each chunk is two
    oneDNN kernels, Linear+GELU and Linear+add, which return new chunk-sized tensors.
    """
    width = None if use_onednn else weight1.shape[0]
    for chunk, hidden_buffer in row_chunks(rows.shape[0], chunk_rows, width, rows):
        normed = F.layer_norm(rows[chunk], rows.shape[-1:], norm_weight, norm_bias, eps)
        if use_onednn:
            rows[chunk] = linear(linear_gelu(normed, weight1, bias1), weight2, bias2,
                                 shortcut[chunk])
            continue
        hidden = torch.addmm(bias1, normed, weight1.t(), out=hidden_buffer)
        branch = torch.addmm(bias2, torch.ops.aten.gelu_(hidden), weight2.t(), out=rows[chunk])
        if scale is None:
            branch.add_(shortcut[chunk])
        else:
            torch.addcmul(shortcut[chunk], branch, scale, out=branch)


def _row_chunks(hidden: torch.Tensor):
    """``row_chunks`` of about ``MLP_TRAINING_CHUNK_NUMEL`` values of ``hidden``'s rows."""
    rows, width = hidden.shape
    return row_chunks(rows, max(1, MLP_TRAINING_CHUNK_NUMEL // width), width, hidden)


def _chunked_forward(hidden, weight2, bias2, residual, use_onednn):
    out = hidden.new_empty(hidden.shape[0], weight2.shape[0])
    for chunk, buffer in _row_chunks(hidden):
        activation = torch.ops.aten.gelu.out(hidden[chunk], out=buffer)
        _product(activation, weight2, bias2, use_onednn,
                 None if residual is None else residual[chunk], out=out[chunk])
    return out


def _add_weight_grad_(total: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
                      use_onednn: bool) -> None:
    """``total += _weight_grad(grad, x)``, in the product on PyTorch's (``addmm_``)."""
    if use_onednn:
        total += _weight_grad(grad, x, use_onednn)
    else:
        total.addmm_(grad.t(), x)


def _chunked_backward(grad, x, weight1, weight2, hidden, needs, use_onednn):
    """The gradients of ``_MLPFunction`` (all but pwconv2's bias) chunk by chunk: GELU's output
    again for pwconv2's weight gradient, then the hidden gradient (in the same buffer on
    PyTorch's products); the weight gradients summed over the chunks."""
    grad_x = torch.empty_like(x) if needs[0] else None
    grad_weight1 = torch.zeros_like(weight1) if needs[1] else None
    grad_bias1 = hidden.new_zeros(hidden.shape[1]) if needs[2] else None
    grad_weight2 = torch.zeros_like(weight2) if needs[3] else None
    for chunk, buffer in _row_chunks(hidden):
        if grad_weight2 is not None:
            activation = torch.ops.aten.gelu.out(hidden[chunk], out=buffer)
            _add_weight_grad_(grad_weight2, grad[chunk], activation, use_onednn)
        grad_hidden = _input_grad(grad[chunk], weight2, use_onednn, out=buffer)
        torch.ops.aten.gelu_backward.grad_input(grad_hidden, hidden[chunk],
                                                grad_input=grad_hidden)
        if grad_x is not None:
            if use_onednn:
                grad_x[chunk] = _input_grad(grad_hidden, weight1, use_onednn)
            else:
                torch.mm(grad_hidden, weight1, out=grad_x[chunk])
        if grad_weight1 is not None:
            _add_weight_grad_(grad_weight1, grad_hidden, x[chunk], use_onednn)
        if grad_bias1 is not None:
            grad_bias1.add_(grad_hidden.sum(0))
    return grad_x, grad_weight1, grad_bias1, grad_weight2


def mlp_training(x: torch.Tensor, weight1: torch.Tensor, bias1: torch.Tensor,
                 weight2: torch.Tensor, bias2: torch.Tensor,
                 residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``_MLPFunction`` on the last dimension of ``x`` (and ``residual``), on oneDNN's linear
    kernel where it pays (``_onednn_fp32_cpu``); compiled, the ``onednn_mlp`` op."""
    rows = x.reshape(-1, x.shape[-1])
    residual_rows = None if residual is None else residual.reshape(-1, residual.shape[-1])
    use_onednn = _onednn_fp32_cpu(x)
    if use_onednn and torch.compiler.is_compiling():
        out = onednn_mlp(rows, weight1, bias1, weight2, bias2, residual_rows,
                         _mlp_chunked(rows, weight1))[0]
    else:
        out = _MLPFunction.apply(rows, weight1, bias1, weight2, bias2, residual_rows, use_onednn)
    return out.view(*x.shape[:-1], out.shape[-1])


class _DepthwiseConv2dFunction(torch.autograd.Function):
    """Depthwise convolution (stride 1, 'same' padding) whose backward is two convolutions.

    PyTorch's CPU backward of a depthwise convolution is slow (12-60x the forward time on a
    2-core EPYC, mostly the weight gradient). Both gradients are convolutions themselves: the
    input gradient convolves the output gradient with the flipped kernel, and the weight
    gradient, per sample, is a depthwise convolution of the input whose kernel is that
    sample's output gradient. oneDNN runs both fast.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        pad = weight.shape[-1] // 2
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-2, -1), padding=pad, groups=c)
        if ctx.needs_input_grad[1]:
            # One convolution per sample works on channels_last tensors as they are; one over
            # all (sample, channel) groups needs NCHW copies and was 1.5-5x slower.
            grad_weight = weight.new_zeros(weight.shape)
            for i in range(n):
                sample_grad = F.conv2d(x[i:i + 1], grad[i].unsqueeze(1), padding=pad, groups=c)
                grad_weight += sample_grad.view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)``
    with a faster backward pass on the CPU (see ``_DepthwiseConv2dFunction``)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2,
                         groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.is_cpu and x.dtype in (torch.float32, torch.float64) and torch.is_grad_enabled()
                and not torch.is_autocast_enabled('cpu') and not torch.jit.is_tracing()):
            return _DepthwiseConv2dFunction.apply(x, self.weight, self.bias)
        return super().forward(x)
