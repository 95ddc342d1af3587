"""ONNX export of an rbzoo model, verified by onnxruntime against rbzoo's own labels.

The graph is written directly with `onnx.helper` from the folded module tree (no tracing): it takes
float32 NCHW images in [0, 1] (the normalization is the graph's first two nodes, as in rbzoo), has
a symbolic batch axis, and carries the model digest, dataset and class names in `metadata_props`.

Variants (all compute the same function; they differ in how the ternary weights are stored):
- ``dense``: float32 weights, BN folded into them (conv weight × s, bias −mean·s).
- ``int8``: the ±1/0 weights as int8 initializers (lossless), cast to float in the graph; the BN
  scale is a separate float multiply, so onnxruntime's constant folding rebuilds at load time
  exactly the float weights of ``dense``.
- ``sparse``: like ``int8`` but as ONNX sparse initializers (int8 values, INT64 flat indices as
  the spec requires); smaller when few weights are kept (9 bytes per kept weight vs 1 per weight).

``bn="explicit"`` keeps every BatchNorm as a BatchNormalization node instead of folding it.
onnx/onnxruntime are an optional extra (``pip install "rbzoo[onnx]"``); they are imported only
when an export or check runs, and their absence is a one-line error.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from ._io import atomic_path, check_output, file_sha256
from .checkpoint import build, dataset_name, model_digest_of, read
from .data import dataset_metadata, get_dataset, get_spec
from .errors import CheckpointError, ConfigError, VerificationError
from .evaluate import select_indices
from .exact import ordered_batches, pinned_numerics
from .layers import SubnetConv2d
from .models._registry import ARCHITECTURES, fold
from .models.resnet import Bottleneck, ResNet
from .resolve import Resolver, resolve_checkpoint
from .verdict import certify, compare_logits

VARIANTS = ("dense", "int8", "sparse")
BN_MODES = ("fold", "explicit")
DEFAULT_OPSET = 17

DIGITS_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def require_onnx():
    """(onnx, onnxruntime), or a one-line ConfigError naming the extra to install."""
    missing = []
    try:
        import onnx
    except ImportError:
        onnx = None
        missing.append("onnx")
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
        missing.append("onnxruntime")
    if missing:
        # No brackets in the message: the CLI prints errors through rich markup, which eats "[onnx]".
        raise ConfigError(f"ONNX export needs {' and '.join(missing)} (rbzoo's onnx extra): pip install onnx onnxruntime")
    return onnx, onnxruntime


# --- graph building --------------------------------------------------------------------------------


class _Graph:
    """Nodes and initializers of one ONNX graph, with unique value names."""

    def __init__(self, onnx, variant: str, bn: str, ternary: set[str]) -> None:
        self.onnx, self.h = onnx, onnx.helper
        self.variant, self.bn, self.ternary = variant, bn, ternary
        self.nodes, self.inits, self.sparse = [], [], []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, *, out: str | None = None, **attrs) -> str:
        out = out or self.name(hint)
        self.nodes.append(self.h.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def ternary_weight(self, hint: str, w: np.ndarray) -> str:
        """A float weight rebuilt in the graph from int8 ±1/0 (dense or sparse initializer)."""
        q = w.astype(np.int8)
        if self.variant == "sparse":
            flat = q.reshape(-1)
            idx = np.flatnonzero(flat).astype(np.int64)
            name = self.name(hint + "_q")
            values = self.onnx.numpy_helper.from_array(flat[idx], name)
            indices = self.onnx.numpy_helper.from_array(idx, name + "_idx")
            self.sparse.append(self.h.make_sparse_tensor(values, indices, list(q.shape)))
        else:
            name = self.const(hint + "_q", q)
        return self.op("Cast", [name], hint + "_f", to=self.onnx.TensorProto.FLOAT)


def _bn_scale(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BN as y = x·s + t (float64 math, rounded once to float32)."""
    var = bn.running_var.detach().double().numpy()
    mean = bn.running_mean.detach().double().numpy()
    s = 1.0 / np.sqrt(var + bn.eps)
    t = -mean * s
    if bn.affine:
        s, t = s * bn.weight.detach().double().numpy(), t * bn.weight.detach().double().numpy() + bn.bias.detach().double().numpy()
    return s.astype(np.float32), t.astype(np.float32)


def _bn_node(g: _Graph, x: str, bn: nn.BatchNorm2d, hint: str) -> str:
    c = bn.num_features
    scale = bn.weight.detach().numpy() if bn.affine else np.ones(c, np.float32)
    bias = bn.bias.detach().numpy() if bn.affine else np.zeros(c, np.float32)
    ins = [x, g.const(hint + "_scale", scale.astype(np.float32)), g.const(hint + "_bias", bias.astype(np.float32)),
           g.const(hint + "_mean", bn.running_mean.detach().numpy()), g.const(hint + "_var", bn.running_var.detach().numpy())]
    return g.op("BatchNormalization", ins, hint, epsilon=float(bn.eps))


def _conv(g: _Graph, x: str, conv: nn.Conv2d, key: str, bn: nn.BatchNorm2d | None = None) -> str:
    """Conv (+ the BN that follows it, folded or explicit)."""
    w = conv.weight.detach().cpu().numpy().astype(np.float32)
    bias = conv.bias.detach().cpu().numpy().astype(np.float32) if conv.bias is not None else None
    fold = bn is not None and g.bn == "fold"
    if fold:
        s, t = _bn_scale(bn)
        t = t + (bias * s if bias is not None else 0)
        bias = t.astype(np.float32)
    if key in g.ternary and g.variant != "dense":
        w_name = g.ternary_weight(key, w)
        if fold:  # the scale stays float: onnxruntime folds Cast×Mul into exactly dense's weights
            w_name = g.op("Mul", [w_name, g.const(key + "_s", s.reshape(-1, 1, 1, 1))], key + "_w")
    else:
        w_name = g.const(key, w * s.reshape(-1, 1, 1, 1) if fold else w)
    ins = [x, w_name] + ([g.const(key + "_b", bias)] if bias is not None else [])
    k, st, pad = conv.kernel_size, conv.stride, conv.padding
    if isinstance(pad, str) or conv.groups != 1 or tuple(conv.dilation) != (1, 1):
        raise ConfigError(f"{key}: ONNX export supports plain convolutions only")
    out = g.op("Conv", ins, key.replace(".weight", ""), kernel_shape=list(k), strides=list(st),
               pads=[pad[0], pad[1], pad[0], pad[1]])
    if bn is not None and not fold:
        out = _bn_node(g, out, bn, key.replace(".weight", "") + "_bn")
    return out


def _act(g: _Graph, x: str, act: nn.Module) -> str:
    if isinstance(act, nn.ReLU):
        return g.op("Relu", [x], "relu")
    if isinstance(act, nn.LeakyReLU):
        return g.op("LeakyRelu", [x], "lrelu", alpha=float(act.negative_slope))
    raise ConfigError(f"ONNX export: unsupported activation {type(act).__name__}")


def _block(g: _Graph, x: str, block: nn.Module, prefix: str) -> str:
    """BasicBlock / Bottleneck exactly as rbzoo.models.resnet runs them."""
    convs = ("conv1", "conv2", "conv3") if isinstance(block, Bottleneck) else ("conv1", "conv2")
    out = x
    for i, c in enumerate(convs, 1):
        out = _conv(g, out, getattr(block, c), f"{prefix}.{c}.weight", getattr(block, f"bn{i}"))
        if i < len(convs):
            out = _act(g, out, block.act)
    short = getattr(block, block.shortcut_name)
    if isinstance(short, nn.Identity):
        res = x
    else:
        res = _conv(g, x, short[0], f"{prefix}.{block.shortcut_name}.0.weight", short[1])
    return _act(g, g.op("Add", [out, res], "add"), block.act)


def _resnet(g: _Graph, x: str, model: nn.Module) -> str:
    """The graph of rbzoo.models.resnet.ResNet.forward (same order of operations)."""
    norm = model.normalize
    x = g.op("Sub", [x, g.const("mean", norm.mean.detach().cpu().numpy())], "normalize_sub")
    x = g.op("Div", [x, g.const("std", norm.std.detach().cpu().numpy())], "normalize_div")
    out = _act(g, _conv(g, x, model.conv1, "conv1.weight", model.bn1), model.act)
    if isinstance(model.maxpool, nn.MaxPool2d):
        mp = model.maxpool
        out = g.op("MaxPool", [out], "maxpool", kernel_shape=[mp.kernel_size] * 2, strides=[mp.stride] * 2,
                   pads=[mp.padding] * 4)
    for i in range(model.num_stages):
        for j, block in enumerate(getattr(model, f"layer{i + 1}")):
            out = _block(g, out, block, f"layer{i + 1}.{j}")
    # Both heads average over the whole final map (resnet.py: adaptive_avg_pool2d(1) / avg_pool2d(map)).
    out = g.op("GlobalAveragePool", [out], "pool")
    out = _conv(g, out, model.fc, "fc.weight", None)
    if model.last is not None:
        out = _bn_node(g, out, model.last, "last") if g.bn == "explicit" else _affine(g, out, model.last, "last")
    return g.op("Flatten", [out], "logits", out="logits", axis=1)


def _affine(g: _Graph, x: str, bn: nn.BatchNorm2d, hint: str) -> str:
    """A BN with no conv to fold into (the logit BN): x·s + t."""
    s, t = _bn_scale(bn)
    x = g.op("Mul", [x, g.const(hint + "_s", s.reshape(1, -1, 1, 1))], hint + "_mul")
    return g.op("Add", [x, g.const(hint + "_t", t.reshape(1, -1, 1, 1))], hint + "_add")


# --- model → ModelProto --------------------------------------------------------------------------


def _folded(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose prunable layers are plain convolutions (sign × mask)."""
    if any(isinstance(m, SubnetConv2d) for m in model.modules()):
        model = fold(copy.deepcopy(model))
    return model.cpu().eval()


def build_proto(model: nn.Module, *, image_size: int, variant: str = "dense", bn: str = "fold",
                opset: int = DEFAULT_OPSET, metadata: dict[str, str] | None = None):
    """The ONNX ModelProto of a (folded or not) rbzoo ResNet: input `images` [batch, C, H, W]
    float32 in [0, 1], output `logits` [batch, classes]."""
    onnx, _ = require_onnx()
    if variant not in VARIANTS:
        raise ConfigError(f"unknown ONNX variant {variant!r} ({', '.join(VARIANTS)})")
    if bn not in BN_MODES:
        raise ConfigError(f"unknown BN mode {bn!r} ({', '.join(BN_MODES)})")
    if not 13 <= opset <= onnx.defs.onnx_opset_version():
        raise ConfigError(f"opset {opset} out of range (13 … {onnx.defs.onnx_opset_version()})")
    keys = list(getattr(model, "prunable_keys", []))
    model = _folded(model)
    if not isinstance(model, ResNet):
        raise ConfigError(f"ONNX export supports rbzoo ResNets, not {type(model).__name__}")
    for key in keys:  # int8 storage must be lossless: every prunable weight is exactly -1, 0 or +1
        w = model.get_parameter(key).detach()
        if not bool(((w == 0) | (w == 1) | (w == -1)).all()):
            raise CheckpointError(f"{key} is not ternary (±1/0); cannot store it as int8")
    g = _Graph(onnx, variant, bn, set(keys))
    h, T = onnx.helper, onnx.TensorProto
    logits = _resnet(g, "images", model)
    channels, classes = model.normalize.mean.numel(), model.fc.out_channels
    graph = h.make_graph(
        g.nodes, "rbzoo", [h.make_tensor_value_info("images", T.FLOAT, ["batch", channels, image_size, image_size])],
        [h.make_tensor_value_info(logits, T.FLOAT, ["batch", classes])], initializer=g.inits,
        sparse_initializer=g.sparse)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="rbzoo",
                         producer_version=__version__)
    proto.ir_version = h.find_min_ir_version_for([h.make_opsetid("", opset)])
    for k, v in (metadata or {}).items():
        proto.metadata_props.add(key=k, value=str(v))
    onnx.checker.check_model(proto)
    return proto


# --- verification under onnxruntime ----------------------------------------------------------------


@dataclass
class CheckResult:
    """rbzoo (torch) vs onnxruntime on the same samples."""

    n: int
    status: str  # exact | tolerance | failed (rbzoo.verdict.compare_logits's verdict)
    tau: float
    verdict: str  # the verdict's one-line message
    differing: list[int]  # sample positions whose labels differ
    near_ties: int  # samples whose relative top-2 margin in rbzoo's own evaluation is below tau
    max_abs_dev: float  # max |logit_onnx − logit_torch|
    max_rel_dev: float  # max over samples of max|Δlogit| / ‖logits‖∞
    torch_correct: int
    onnx_correct: int
    torch_predictions_sha256: str
    onnx_predictions_sha256: str
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def message(self) -> str:
        return f"{self.verdict}; max |Δlogit| {self.max_abs_dev:.3g}, max relative {self.max_rel_dev:.3g}"


def _session(ort, path: str | os.PathLike | bytes, threads: int | None = None):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3  # onnxruntime's warnings are not the user's business
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_onnx(path: str | os.PathLike | bytes, model: nn.Module, dataset, *, indices=None, batch_size: int = 256,
               threads: int | None = None) -> CheckResult:
    """Run the ONNX graph under onnxruntime and rbzoo's `model` under pinned numerics on the same
    batches of `dataset` (images in [0, 1]) and judge the graph by rbzoo.verdict.compare_logits: a
    label may differ only where rbzoo's own margin is below τ, and no logit may deviate by more than
    MAX_GRAPH_DEVIATION of its sample's largest logit (a degenerate graph fails both)."""
    _, ort = require_onnx()
    t0 = time.perf_counter()
    session = _session(ort, path, threads)
    name = session.get_inputs()[0].name
    model = _folded(model)
    refs, gots, labels = [], [], []
    with pinned_numerics():
        for x, y in ordered_batches(dataset, indices, batch_size):
            x = x.to(torch.float32)
            refs.append(model(x).numpy())
            gots.append(session.run(None, {name: x.numpy()})[0])
            labels.append(np.asarray(y, dtype=np.int64).reshape(-1))
    ref, got, y = np.concatenate(refs), np.concatenate(gots), np.concatenate(labels)
    if ref.shape != got.shape:
        raise VerificationError(f"onnxruntime returned logits of shape {got.shape}, rbzoo {ref.shape}")
    verdict, rel_dev = compare_logits(got, ref)
    reference, new = certify(ref), certify(got)
    dev = np.abs(got.astype(np.float64) - ref)
    return CheckResult(
        n=len(y), status=verdict.status, tau=verdict.tau, verdict=verdict.message(),
        differing=verdict.differing.tolist(), near_ties=len(reference.near_ties(verdict.tau)),
        max_abs_dev=float(dev.max()) if dev.size else 0.0, max_rel_dev=rel_dev,
        torch_correct=int((reference.labels == y).sum()), onnx_correct=int((new.labels == y).sum()),
        torch_predictions_sha256=reference.labels_sha256, onnx_predictions_sha256=new.labels_sha256,
        wall_s=time.perf_counter() - t0)


# --- export ---------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    path: str
    variant: str
    bn: str
    opset: int
    file_size: int
    model_digest: str
    dataset: str | None
    image_size: int
    metadata: dict = field(default_factory=dict)
    check: CheckResult | None = None
    wall_s: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def class_names(name: str, dataset=None, num_classes: int | None = None) -> list[str]:
    """Class names for the ONNX metadata: the dataset's own when it has them."""
    if name == "digits":
        return list(DIGITS_CLASSES)
    if name == "cifar10":
        return list(CIFAR10_CLASSES)
    found = getattr(dataset, "classes", None)
    if found:
        return [str(c) for c in found]
    return [str(i) for i in range(num_classes or 0)]


def _open_model(model_or_ckpt, remote: Resolver | None = None) -> tuple[nn.Module, dict[str, str], Path | None]:
    """(eval-mode module, its rbzoo metadata, the checkpoint file or None)."""
    if isinstance(model_or_ckpt, nn.Module):
        return model_or_ckpt, dict(getattr(model_or_ckpt, "rbzoo_metadata", None) or {}), None
    path = resolve_checkpoint(str(model_or_ckpt), remote)
    ckpt = read(path)
    return build(ckpt), ckpt.metadata, path


def _onnx_metadata(model, metadata: dict, source: Path | None, dataset: str | None, classes: list[str],
                   variant: str, bn: str) -> dict[str, str]:
    out = {
        "rbzoo.model_digest": model_digest_of(model),
        "rbzoo.arch": json.dumps(getattr(model, "arch", None) or json.loads(metadata.get("rbzoo.arch", "null")), sort_keys=True),
        "rbzoo.dataset": json.dumps(dataset_metadata(dataset)) if dataset else "",
        "rbzoo.classes": json.dumps(classes),
        "rbzoo.variant": variant,
        "rbzoo.bn": bn,
        "rbzoo.input": "float32 NCHW images in [0, 1]; normalization is inside the graph",
        "rbzoo.version": __version__,
    }
    if source is not None:
        out["rbzoo.source_sha256"] = file_sha256(source)[0]
    return {k: v for k, v in out.items() if v}


def export_onnx(model_or_ckpt, out: str | os.PathLike, *, variant: str = "dense", bn: str = "fold",
                opset: int = DEFAULT_OPSET, dataset: str | None = None, data_dir=None, check: bool = True,
                check_n: int | None = None, force: bool = False, image_size: int | None = None,
                batch_size: int = 256, remote: Resolver | None = None) -> ExportReport:
    """Write `model_or_ckpt` (module, checkpoint file, run folder, zoo name or repo id) as ONNX.

    With `check` the graph is verified under onnxruntime on the test split of the model's dataset
    (the first `check_n` samples, or all) before it replaces `out`; a failure leaves nothing
    behind and raises VerificationError (exit 3).
    """
    t0 = time.perf_counter()
    require_onnx()
    if check_n is not None and check_n < 1:
        raise ConfigError(f"--check-n must be >= 1, got {check_n}")
    model, metadata, source = _open_model(model_or_ckpt, remote)
    model = _folded(model)  # once: the graph, the digest and the check all read the folded weights
    out = check_output(out, inputs=(source,), force=force)
    name = dataset or dataset_name(metadata)
    if check and not name:
        raise ConfigError("the model records no dataset (rbzoo.dataset) to verify on; pass --dataset")
    arch = getattr(model, "arch", None) or json.loads(metadata.get("rbzoo.arch", "{}"))
    ds = indices = None
    if name:
        spec = get_spec(name)
        if arch.get("num_classes") != spec.num_classes or arch.get("in_channels", 3) != spec.channels:
            raise ConfigError(f"the model ({arch.get('num_classes')} classes, {arch.get('in_channels', 3)} channels) "
                              f"does not fit {name} ({spec.num_classes} classes, {spec.channels} channels)")
        image_size = image_size or spec.image_size
    if check:
        ds = get_dataset(name, "test", data_dir)
        indices = select_indices(len(ds), min(check_n or len(ds), len(ds)))
    if image_size is None:
        image_size = ARCHITECTURES[arch["id"]].input_size
    classes = class_names(name, ds, arch.get("num_classes")) if name else [str(i) for i in range(arch.get("num_classes", 0))]
    meta = _onnx_metadata(model, metadata, source, name, classes, variant, bn)
    data = build_proto(model, image_size=image_size, variant=variant, bn=bn, opset=opset, metadata=meta).SerializeToString()
    result = None
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
        if check:  # verified before it replaces anything: a failure leaves no file behind
            result = check_onnx(tmp, model, ds, indices=indices, batch_size=batch_size)
            if not result.ok:
                raise VerificationError(f"ONNX export not written: {result.message()}")
    return ExportReport(str(out), variant, bn, opset, len(data), meta["rbzoo.model_digest"], name, image_size,
                        meta, result, time.perf_counter() - t0)
