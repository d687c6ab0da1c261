"""Counting one traced frame step: primitives, and the kernels Metal would dispatch for them, by stage.

The method of bench/frame_kernels.py (its docstring says what is counted; this module how):
`mx.export_to_dot` of lazy outputs gives the graph still to be computed, nodes keyed by primitive
address (unique within one trace; replays of a compiled function called outside a trace would
share them). On MLX's CPU wheel the fast ops always take their fallbacks, so the Metal estimate
replaces them by stand-in primitives while tracing. Kernels per primitive on Metal (MLX 0.32,
mlx/backend/metal): views (VIEWS) none; each elementwise op, `Compiled` (a fused chain), matmul /
qmv, RMSNorm, RoPE, fused SDPA, gather / scatter, scan, reduction, arg-reduction, Full, Arange and
AsType one; Concatenate one copy per input; DynamicSliceUpdate two (an offset kernel, then the
copy); a sort over more than 2,048 ids four (multi-block merge sort). Not modelled: copies Metal
makes of other non-contiguous inputs, and of inputs it cannot donate.
"""

from __future__ import annotations

import io
import re
from collections import Counter, defaultdict
from contextlib import ExitStack, contextmanager

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models import qwen3

from mlx_qwen_tts.engine import step as step_module
from mlx_qwen_tts.engine.step import BatchState
from mlx_qwen_tts.models.fused import FusedAttention

# Metal: primitives that only share or re-describe a buffer (no dispatch; Reshape assumed contiguous).
VIEWS = {"Reshape", "Slice", "Transpose", "Broadcast", "ExpandDims", "Squeeze", "Flatten", "Unflatten", "Split",
         "Copy", "StopGradient", "AsStrided", "Depends", "BroadcastAxes", "NumberOfElements"}
# Metal dispatches per primitive when not 1 (mlx/backend/metal, MLX 0.32): DynamicSliceUpdate computes its
# offset in a kernel, then copies; Concatenate copies each input; sorts over > 2,048 ids are a multi-block
# merge sort (block sort, partition, merge, copy back).
STAND_INS = {"CumMax": "RMSNorm", "CumProd": "RoPE", "CumMin": "ScaledDotProductAttention"}
SORTS = {"Sort", "ArgSort", "ArgPartition", "Partition"}
SORT_BLOCK = 2048
STAGES = ("talker layers", "talker KV writes", "predictor layers", "predictor KV writes", "final norms", "heads",
          "embeddings", "predictor sampling", "code 0 sampling", "glue")


# ---- graphs -------------------------------------------------------------------------------------------------

class Graph:
    """Primitive nodes of `mx.export_to_dot` (keyed by primitive address: unique within one trace)."""

    def __init__(self, arrays):
        dot = io.StringIO()
        mx.export_to_dot(dot, [a for a in arrays if isinstance(a, mx.array)])
        text = dot.getvalue()
        self.label = dict(re.findall(r'\{ (\d+) \[label ="?([^",\]]+)', text))
        self.sinks = re.findall(r'rank=sink; "(\w+)"', text)
        self.inputs, self.producer = defaultdict(list), {}
        for src, dst in re.findall(r'^"?(\w+)"? -> "?(\w+)"?$', text, re.M):
            if src in self.label:
                self.producer[dst] = src
            else:
                self.inputs[dst].append(src)

    def sink_producer(self) -> str:
        return self.producer[self.sinks[0]]

    def neighbours(self, node):
        consumers = defaultdict(set)
        for n, ins in self.inputs.items():
            for a in ins:
                consumers[a].add(n)
        self._consumers = consumers
        return self._neighbours(node)

    def _neighbours(self, node):
        outs = [a for a, p in self.producer.items() if p == node]
        ups = [self.producer[a] for a in self.inputs[node] if a in self.producer]
        return ups + [c for a in outs for c in self._consumers.get(a, ())]


def kind(label: str) -> str:
    return "Compiled" if label.startswith("Compiled") else STAND_INS.get(label, label)


def kernels(graph: Graph, node: str, big_sorts: set) -> int:
    k = kind(graph.label[node])
    if k in VIEWS:
        return 0
    if k == "Concatenate":
        return len(graph.inputs[node])
    if k == "DynamicSliceUpdate":
        return 2
    if k in SORTS and node in big_sorts:
        return 4
    return 1


def summary(graph: Graph, big_sorts=frozenset(), stage_of=None, copies=()) -> dict:
    """Counts of a graph; `copies`: the stages of modelled input copies (kernels without a primitive)."""
    nodes = list(graph.label)
    out = dict(primitives=len(nodes), views=sum(kind(graph.label[n]) in VIEWS for n in nodes),
               kernels=sum(kernels(graph, n, big_sorts) for n in nodes) + len(copies), copies=len(copies),
               by_kind=dict(Counter(kind(graph.label[n]) for n in nodes).most_common()))
    if stage_of is not None:
        per = defaultdict(lambda: Counter())
        for n in nodes:
            s = per[stage_of.get(n, "glue")]
            s["primitives"] += 1
            s["views"] += kind(graph.label[n]) in VIEWS
            s["kernels"] += kernels(graph, n, big_sorts)
        for stage in copies:
            per[stage]["kernels"] += 1
        out["stages"] = {s: dict(per[s]) for s in STAGES if s in per}
    return out


# ---- stand-ins for the fast ops (the Metal estimate) -------------------------------------------------------

def fused_sdpa(q, k) -> bool:
    """MLX 0.32 Metal's fused attention (sdpa_vector): short queries, these head dims, L x GQA <= 32."""
    length, dim = q.shape[2], q.shape[-1]
    return length <= 8 and dim in (64, 96, 128, 192, 256) and length * (q.shape[1] // k.shape[1]) <= 32


@contextmanager
def metal_stand_ins(kept: list, copies: list, claims, split_heads: bool):
    """`copies`: the stage of each strided input Metal's RMSNorm would copy first (modelled): with
    `split_heads` (fused q/k/v, models/fused.py), the q/k heads sliced from more than one row."""
    fast = mx.fast
    originals = fast.rms_norm, fast.rope, fast.scaled_dot_product_attention

    def rms_norm(x, weight, eps):
        kept.append(weight)
        if split_heads and x.ndim == 4 and x.shape[0] * x.shape[1] > 1:  # [B, L, heads, head dim]
            copies.append(claims.stack[-1] if claims else "glue")
        return mx.cummax(x, axis=-1)

    def rope(x, dims, *, offset, **kw):
        kept.append(offset)
        return mx.cumprod(x, axis=-1)

    def sdpa(q, k, v, *, mask=None, **kw):
        if not fused_sdpa(q, k):
            return originals[2](q, k, v, mask=mask, **kw)
        kept.extend([k, v, mask])
        return mx.cummin(q, axis=-1)

    fast.rms_norm, fast.rope, fast.scaled_dot_product_attention = rms_norm, rope, sdpa
    try:
        yield
    finally:
        fast.rms_norm, fast.rope, fast.scaled_dot_product_attention = originals


# ---- stage claims --------------------------------------------------------------------------------------------

class Claims:
    """node -> stage, claimed by wrappers while the step is traced."""

    def __init__(self):
        self.stage_of, self.stack = {}, ["glue"]

    def claim(self, arrays, stage):
        arrays = [a for _, a in tree_flatten(arrays) if isinstance(a, mx.array)]
        if arrays:
            for node in Graph(arrays).label:
                self.stage_of.setdefault(node, stage)

    def wrap(self, fn, stage_for):
        claims = self

        def wrapped(*args, **kwargs):
            stage = stage_for(*args)
            if stage is None:
                return fn(*args, **kwargs)
            claims.claim([a for a in args if not hasattr(a, "update_and_fetch")], claims.stack[-1])
            claims.stack.append(stage)
            try:
                out = fn(*args, **kwargs)
            finally:
                claims.stack.pop()
            claims.claim(out, stage)
            return out
        return wrapped


class _StagedCache:
    """A cache proxy whose KV write is claimed as a stage."""

    def __init__(self, cache, claims, stage):
        self._cache, self._claims, self._stage = cache, claims, stage

    def __getattr__(self, name):
        return getattr(self._cache, name)

    def update_and_fetch(self, keys, values):
        self._claims.claim([keys, values], self._claims.stack[-1])
        out = self._cache.update_and_fetch(keys, values)
        self._claims.claim(out, self._stage)
        return out


@contextmanager
def stage_wrappers(model, claims: Claims):
    talker_layers = {id(x) for x in model.talker.layers}
    heads = {id(model.talker.codec_head), *map(id, model.code_predictor.lm_head)}
    embeddings = {id(model.talker.codec_embedding), *map(id, model.code_predictor.codec_embedding)}
    norms = {id(model.talker.norm), id(model.code_predictor.norm)}

    def by_instance(ids, stage):
        return lambda self, *a: stage if id(self) in ids else None

    def layer_stage(self, *a):
        return "talker layers" if id(self) in talker_layers else "predictor layers"

    block_call = qwen3.TransformerBlock.__call__

    def block(self, x, mask=None, cache=None):
        stage = "talker KV writes" if id(self) in talker_layers else "predictor KV writes"
        return block_call(self, x, mask, _StagedCache(cache, claims, stage))

    patches = [(qwen3.TransformerBlock, "__call__", claims.wrap(block, layer_stage))]
    for cls in (nn.Linear, nn.QuantizedLinear):
        patches.append((cls, "__call__", claims.wrap(cls.__call__, by_instance(heads, "heads"))))
    for cls in (nn.Embedding, nn.QuantizedEmbedding):
        patches.append((cls, "__call__", claims.wrap(cls.__call__, by_instance(embeddings, "embeddings"))))
    patches.append((nn.RMSNorm, "__call__", claims.wrap(nn.RMSNorm.__call__, by_instance(norms, "final norms"))))
    patches.append((step_module, "sample", claims.wrap(step_module.sample, lambda *a: (
        "code 0 sampling" if claims.stack[-1] == "code 0 sampling" else "predictor sampling"))))
    patches.append((step_module, "pick_code0", claims.wrap(step_module.pick_code0, lambda *a: "code 0 sampling")))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, new in patches:
        setattr(owner, name, new)
    try:
        yield
    finally:
        for owner, name, old in saved:
            setattr(owner, name, old)


def compiled_stages(graph: Graph, traced_stage: dict) -> dict:
    """Stages of the compiled graph: kept primitives by address, fused nodes by their neighbours' majority."""
    stage_of = {n: traced_stage[n] for n in graph.label if n in traced_stage}
    pending = [n for n in graph.label if n not in stage_of]
    if pending:
        graph.neighbours(pending[0])  # builds the consumer index
    for _ in range(8):
        left = []
        for n in pending:
            votes = Counter(stage_of[m] for m in graph._neighbours(n) if m in stage_of)
            if votes:
                stage_of[n] = votes.most_common(1)[0][0]
            else:
                left.append(n)
        if not left or len(left) == len(pending):
            break
        pending = left
    return stage_of


# ---- the count -------------------------------------------------------------------------------------------------

def count_frame(model, state: BatchState, consts, plans, *, metal: bool, stages: bool) -> dict:
    """Counts of one frame step: {"before": ..., "after": ...} (primitives, views, kernels, by kind, stages)."""
    mx.eval(state, consts)
    kept, copies, big_sorts, traced = [], [], set(), {}
    claims = Claims() if stages else None
    sort_fns = {name: getattr(mx, name) for name in ("sort", "argsort", "argpartition")}

    def counted(consts, state):
        frames, new_state = model.frame_step._step(consts, state, plans)
        flat = [a for _, a in tree_flatten([frames, list(new_state)]) if isinstance(a, mx.array)]
        flat += [a for a in kept if isinstance(a, mx.array)]
        traced["graph"] = Graph(flat)
        if claims is not None:
            claims.claim(flat, "glue")
        return flat

    def sized(name):
        def fn(a, *args, axis=-1, **kw):
            out = sort_fns[name](a, *args, axis=axis, **kw)
            if a.shape[axis] > SORT_BLOCK:
                big_sorts.add(Graph([out]).sink_producer())
            return out
        return fn

    compiled = mx.compile(counted, inputs=[model.talker.state, model.code_predictor.state])
    with ExitStack() as stack:
        if metal:
            layers = [*model.talker.layers, *model.code_predictor.layers]
            split_heads = any(isinstance(x.self_attn, FusedAttention) for x in layers)
            stack.enter_context(metal_stand_ins(kept, copies, claims, split_heads))
        if claims is not None:
            stack.enter_context(stage_wrappers(model, claims))
        stack.callback(lambda: [setattr(mx, name, fn) for name, fn in sort_fns.items()])
        for name in sort_fns:
            setattr(mx, name, sized(name))
        outputs = compiled(consts, state)
    before, after = traced["graph"], Graph(outputs)
    traced_stage = claims.stage_of if claims else None
    return dict(before=summary(before, big_sorts, traced_stage, copies),
                after=summary(after, big_sorts, compiled_stages(after, traced_stage) if claims else None, copies))
