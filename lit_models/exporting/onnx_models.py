"""ONNX export of the token architectures, ONNX Runtime inference and the parity check.

* :class:`LogitsOnly`: ``input_ids (B, T) -> logits (B, T, V)``, the forward pass of every token
  architecture (the aux-loss dict is dropped).
* :class:`GPTWithPast`: the GPT with explicit past keys/values for incremental decoding:
  ``(input_ids (B, T), past_keys, past_values (L, B, H, P, D)) -> (logits, present_keys,
  present_values (L, B, H, P + T, D))``; ``P = 0`` (empty past) is the prefill.
* :func:`export_onnx`: ``torch.onnx.export(dynamo=True)`` with batch, sequence (and past)
  dimensions left to ``torch.export`` (``Dim.AUTO``); the result must keep them symbolic. Two
  architecture details are handled here, without changing the architectures: QTG's neighbour
  selection sorts with ``stable=True``, which the ONNX translation table lacks, so it is mapped to
  ``TopK(largest=0)`` over the whole axis (ONNX TopK breaks ties by the lower index: a stable
  sort); and its Fisher-Rao attention kernel loops over row blocks in Python (a loop the tracer
  unrolls for one sequence length), so the export runs the same attention through
  ``geo_attention_reference`` (full matrices, the reference the kernels are tested against).
  If the dynamo exporter fails, the TorchScript exporter is tried with the reason logged.
* :class:`OrtNet`: an ONNX Runtime session behind the architecture interface (``forward``,
  ``setup_kv_cache``, ``config.block_size``), so ``lit_models.generation.generate`` and the
  ``LanguageModel`` evaluation loop run it unchanged.
* :func:`parity`: max |logit difference| against PyTorch and greedy tokens of both.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lhp.errors import UserError
from lit_models.archs.gpt import GPT
from lit_models.components.geo_attention import GeoSelfAttention, geo_attention_reference

log = logging.getLogger(__name__)
OPSET = 18


class ExportError(UserError):
    """An architecture that the ONNX exporters cannot express."""


class LogitsOnly(nn.Module):
    """The forward pass as a graph: token ids -> logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids)[0]


class _ReferenceGeoAttention(nn.Module):
    """``GeoSelfAttention`` of a full causal pass through ``geo_attention_reference`` (same
    parameters, same math, no Python loop over row blocks): the form an exporter can trace."""

    def __init__(self, attn: GeoSelfAttention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor, start_pos: int | None = None) -> torch.Tensor:
        a = self.attn
        b, t, c = x.shape
        q, k, v = a.qkv(x).view(b, t, 3, a.n_head, a.head_dim).permute(2, 0, 3, 1, 4)
        if a.rope is not None:
            q, k = a.rope(q, 0), a.rope(k, 0)
        sq, _ = a._distributions(q)
        sk, _ = a._distributions(k)
        y = geo_attention_reference(sq, sk, v.float(), a.gamma, a.eps).to(v.dtype)
        return a.resid_dropout(a.proj(y.transpose(1, 2).reshape(b, t, c)))


def exportable(net: nn.Module) -> nn.Module:
    """A copy of ``net`` in eval mode whose modules the exporter can trace (see module doc)."""
    net = copy.deepcopy(net).eval()
    for block in getattr(net, "blocks", []):
        if isinstance(block.attn, GeoSelfAttention):
            block.attn = _ReferenceGeoAttention(block.attn)
    return net


class GPTWithPast(nn.Module):
    """The GPT's forward with explicit past keys/values (module doc); same weights as ``net``."""

    def __init__(self, net: GPT) -> None:
        super().__init__()
        if type(net) is not GPT:
            raise ExportError(f"the past-key/value variant is written for the GPT, not "
                              f"{type(net).__name__}")
        self.net = net

    def forward(self, input_ids: torch.Tensor, past_keys: torch.Tensor,
                past_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net, p, t = self.net, past_keys.size(3), input_ids.size(1)
        positions = torch.arange(t, device=input_ids.device) + p
        x = net.wte(input_ids)
        if net.wpe is not None:
            x = x + net.wpe(positions)
        # query i (absolute position p + i) sees keys 0..p + i
        mask = torch.arange(p + t, device=x.device).unsqueeze(0) <= positions.unsqueeze(1)
        keys, values = [], []
        for i, block in enumerate(net.blocks):
            a, h = block.attn, block.ln_1(x)
            b, _, c = h.shape
            q, k, v = a.qkv(h).view(b, t, 3, a.n_head, a.head_dim).permute(2, 0, 3, 1, 4)
            if a.q_norm is not None:
                q, k = a.q_norm(q), a.k_norm(k)
            if a.rope is not None:
                q, k = a.rope(q, p), a.rope(k, p)
            k, v = torch.cat([past_keys[i], k], dim=2), torch.cat([past_values[i], v], dim=2)
            keys.append(k)
            values.append(v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + a.resid_dropout(a.proj(y.transpose(1, 2).reshape(b, t, c)))
            x = x + block.mlp(block.ln_2(x))
        return net.head(net.ln_f(x)), torch.stack(keys), torch.stack(values)


def past_shape(net: GPT, batch: int, length: int) -> tuple[int, ...]:
    c = net.config
    return (c.n_layer, batch, c.n_head, length, c.head_dim)


def _sort_stable(self, stable=None, dim: int = -1, descending: bool = False):  # noqa: ANN001
    """aten::sort(stable=True) as ONNX TopK over the whole axis (ties: lower index first)."""
    from onnxscript import opset18 as op

    k = op.Gather(op.Shape(self), op.Constant(value_ints=[dim]))
    values, indices = op.TopK(self, k, axis=dim, largest=descending, sorted=True)
    return values, indices


def _symbolic_dims(path: Path, wanted: dict[str, tuple[int, ...]]) -> list[str]:
    """The ``input:axis`` pairs of ``wanted`` that the saved model fixed to a number."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    fixed = []
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        fixed += [f"{inp.name}:{axis}={dims[axis].dim_value}" for axis in wanted.get(inp.name, ())
                  if not dims[axis].dim_param]
    return fixed


def export_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
                input_names: list[str], output_names: list[str],
                dynamic: dict[str, tuple[int, ...]], what: str) -> str:
    """Export ``module`` to ``path``; returns the exporter used ("dynamo" or "torchscript").

    ``dynamic``: input name -> axes that must stay symbolic. Any failure is an ``ExportError``
    saying why.
    """
    auto = torch.export.Dim.AUTO
    shapes = {name: {axis: auto for axis in dynamic.get(name, ())} for name in input_names}
    try:
        program = torch.onnx.export(
            module.eval(), args, dynamo=True, input_names=input_names, output_names=output_names,
            dynamic_shapes=tuple(shapes.values()), opset_version=OPSET, verbose=False,
            custom_translation_table={torch.ops.aten.sort.stable: _sort_stable})
        program.save(str(path), external_data=False)
        fixed = _symbolic_dims(path, dynamic)
        if fixed:
            raise RuntimeError(f"the traced graph fixed {', '.join(fixed)}")
        return "dynamo"
    except Exception as err:  # noqa: BLE001 - the exporters raise many types; the reason is kept
        reason = _reason(err)
    log.warning(f"{what}: the dynamo ONNX exporter failed ({reason}); trying the TorchScript "
                "exporter")
    path.unlink(missing_ok=True)
    try:
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, input_names=input_names,
                          output_names=output_names, opset_version=OPSET,
                          dynamic_axes={n: list(axes) for n, axes in dynamic.items()})
        fixed = _symbolic_dims(path, dynamic)
        if fixed:
            raise RuntimeError(f"the traced graph fixed {', '.join(fixed)}")
        return "torchscript"
    except Exception as err:  # noqa: BLE001
        path.unlink(missing_ok=True)
        raise ExportError(f"{what} cannot be exported to ONNX: dynamo exporter: {reason}; "
                          f"TorchScript exporter: {_reason(err)}") from None


def _reason(err: BaseException) -> str:
    """The first meaningful line of an exporter error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "exception summary" not in ln.lower() and not ln.startswith("#")
              and "class '" in ln] or lines
    return (useful[0] if useful else type(err).__name__)[:400]


def quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic quantization: int8 weights of MatMul/Gemm, activations quantized on
    the fly (per tensor), everything else float32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session (``threads``: intra-op threads, None = ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtNet(nn.Module):
    """An ONNX Runtime model behind the token-architecture interface (module doc).

    With a past-key/value model the cache is the ``present_*`` outputs fed back; without one,
    cached decoding keeps the tokens and recomputes the window (same logits).
    """

    def __init__(self, path: Path, config: Any, threads: int | None = None) -> None:
        super().__init__()
        self.session = session(path, threads)
        self.config = config
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.with_past = "past_keys" in inputs
        self._past_dims = inputs["past_keys"].shape if self.with_past else None
        self._state: Any = None

    def _run(self, ids: torch.Tensor, past: tuple[Any, Any] | None = None) -> list[Any]:
        feed = {"input_ids": ids.detach().cpu().numpy().astype("int64")}
        if self.with_past:
            if past is None:
                past = (self._empty_past(ids.size(0)),) * 2
            feed.update(past_keys=past[0], past_values=past[1])
        return self.session.run(None, feed)

    def _empty_past(self, batch: int) -> Any:
        import numpy as np

        layers, _, heads, _, dim = self._past_dims
        return np.zeros((layers, batch, heads, 0, dim), dtype=np.float32)

    def setup_kv_cache(self, batch_size: int, max_len: int | None = None, device: Any = None,
                       dtype: Any = None) -> None:
        self._state = None

    def clear_kv_cache(self) -> None:
        self._state = None

    def forward(self, idx: torch.Tensor, start_pos: int | None = None,
                teacher: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if start_pos is None:
            return torch.from_numpy(self._run(idx)[0]), {}
        if self.with_past:
            past = None if start_pos == 0 else self._state
            if past is not None and past[0].shape[3] != start_pos:
                raise RuntimeError(f"cache holds {past[0].shape[3]} positions, asked for {start_pos}")
            logits, keys, values = self._run(idx, past)
            self._state = (keys, values)
            return torch.from_numpy(logits), {}
        tokens = idx if start_pos == 0 or self._state is None else torch.cat([self._state, idx], 1)
        self._state = tokens
        return torch.from_numpy(self._run(tokens)[0][:, -idx.size(1):]), {}


@torch.no_grad()
def parity(net: nn.Module, ort_net: OrtNet, n_tokens: int = 64, seed: int = 0) -> dict[str, Any]:
    """ONNX Runtime against PyTorch on random token ids (fixed seed): max |Δlogit| over inputs of
    several lengths (1, a short prompt, the whole context), relative to the largest |logit|, and
    the greedy continuation of ``n_tokens`` tokens from an 8-token prompt (the KV-cache path for
    a past-key/value model, the full-window path otherwise)."""
    from lit_models.generation import generate

    net = net.eval()
    vocab, block = net.config.vocab_size, net.config.block_size
    gen = torch.Generator().manual_seed(seed)
    max_diff, scale = 0.0, 0.0
    for length in sorted({1, min(8, block), block}):
        ids = torch.randint(0, vocab, (2, length), generator=gen)
        want, got = net(ids)[0].float(), ort_net(ids)[0].float()
        max_diff = max(max_diff, float((want - got).abs().max()))
        scale = max(scale, float(want.abs().max()))
    prompt = torch.randint(0, vocab, (1, min(8, block)), generator=gen)
    cache = ort_net.with_past
    want = generate(net, prompt, n_tokens, temperature=0, use_cache=cache)
    got = generate(ort_net, prompt, n_tokens, temperature=0, use_cache=cache)
    same = int((want[0, prompt.size(1):] == got[0, prompt.size(1):]).sum())
    rel = max_diff / scale if scale > 0 else math.inf
    return {"max_abs_logit_diff": max_diff, "logit_scale": scale, "rel_logit_diff": rel,
            "greedy_tokens": n_tokens, "greedy_tokens_equal": same,
            "greedy_identical": bool(torch.equal(want, got))}
