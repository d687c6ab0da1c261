"""How many primitives and (estimated) Metal kernels one frame step dispatches, per stage.

    python bench/frame_kernels.py [--shapes tiny,0.6b,1.7b] [--batch 1,8] [--modes sampled,greedy]
                                  [--stage-layers 2] [--out FILE.json]

It traces the engine's own frame step (`model.frame_step._step`, the function `FrameStep` compiles)
inside a fresh `mx.compile`, for a batch of B rows right after a 1-position prefill (KV capacity
256), and counts the graph twice:

- **CPU trace**: the graph as MLX's CPU backend runs it (its `mx.fast` ops expand into their
  fallbacks), before `mx.compile` (the tracer's outputs) and after (the compiled call's lazy
  outputs: elementwise chains fused into `Compiled` nodes);
- **Metal estimate**: the same trace with `mx.fast.rms_norm`, `mx.fast.rope` and, where Metal has
  a fused kernel for the shape, `mx.fast.scaled_dot_product_attention` each replaced by one
  non-fusible stand-in primitive (cummax / cumprod / cummin: shape-preserving, never fused), their
  other inputs kept alive as extra outputs so the upstream graph is unchanged. After compilation,
  every non-view primitive is counted as the Metal kernels it dispatches (the rules, from MLX
  0.32's Metal backend, are in bench/graph_count.py).

Stages: wrappers on the step's callees (decoder layers, KV writes, heads, embeddings, final norms,
the predictor's draws, code 0's pick) claim the not-yet-claimed primitives of their outputs'
graph on exit; arguments built by the caller are claimed for the caller on entry; what remains is
glue. After compilation a `Compiled` node takes the majority stage of its neighbours. Claiming
exports the graph at every wrapper (quadratic), so stages come from a model of `--stage-layers`
talker and predictor layers, reported per layer and scaled to full depth; totals are the full
model's. Weights are zeros in the real layout (8-bit, group 64, bfloat16 scales and activations:
what a converted model runs on a Mac); nothing is evaluated beyond the starting state.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from graph_count import count_frame  # noqa: E402
from profile_frame import one_row_batch, plans  # noqa: E402
from shapes import FIXTURE, config_dicts  # noqa: E402
from mlx_qwen_tts import quantize  # noqa: E402
from mlx_qwen_tts.config import parse_model_config  # noqa: E402
from mlx_qwen_tts.engine.generate import _take  # noqa: E402
from mlx_qwen_tts.loading import Model, load_model  # noqa: E402
from mlx_qwen_tts.models.code_predictor import CodePredictor  # noqa: E402
from mlx_qwen_tts.models.talker import Talker  # noqa: E402
from mlx_qwen_tts.tokenizer import TextTokenizer  # noqa: E402

# ---- models and states ---------------------------------------------------------------------------------------

GROUP_SIZE, BITS = 64, 8


def build(shape: str, layers: int | None = None) -> Model:
    """tiny: the fixture in float32 (as the tests run it); 0.6b / 1.7b: zero weights in the converted 8-bit
    layout with bfloat16 scales and activations, `layers` talker and predictor layers if given."""
    if shape == "tiny":
        return load_model(FIXTURE, dtype=mx.float32, codec=False)
    cfg, st_cfg, gen = config_dicts(shape)
    if layers:
        cfg["talker_config"]["num_hidden_layers"] = layers
        cfg["talker_config"]["code_predictor_config"]["num_hidden_layers"] = layers
        cfg["talker_config"]["code_predictor_config"]["layer_types"] = ["full_attention"] * layers
    config = parse_model_config(cfg, st_cfg, gen)
    talker, predictor = Talker(config), CodePredictor(config)
    for prefix, module in (("talker.", talker), ("code_predictor.", predictor)):
        nn.quantize(module, group_size=GROUP_SIZE, bits=BITS, class_predicate=lambda path, m: isinstance(
            m, (nn.Linear, nn.Embedding)) and quantize.should_quantize(f"{prefix}{path}.weight", m.weight.shape,
                                                                      GROUP_SIZE))
        module.update(tree_map(lambda a: mx.zeros(a.shape, mx.bfloat16 if mx.issubdtype(a.dtype, mx.floating)
                                                  else a.dtype), module.parameters()))
        mx.eval(module.parameters())
    return Model(config=config, talker=talker, code_predictor=predictor, tokenizer=TextTokenizer(FIXTURE))


def frame_state(model, batch_size: int, greedy: bool):
    """(constants, state, plans) of `batch_size` identical rows right after a 1-position prefill."""
    batch = one_row_batch(model, "Hello.", 0, prefill_positions=1, greedy=greedy)
    return batch.consts, _take(batch.state, mx.array([0] * batch_size)), plans(batch)


def count(model, batch_size: int, greedy: bool, stages: bool) -> dict:
    consts, state, plans = frame_state(model, batch_size, greedy)
    return dict(cpu=count_frame(model, state, consts, plans, metal=False, stages=stages),
                metal=count_frame(model, state, consts, plans, metal=True, stages=stages))


def graph_sizes(model, text, seed) -> dict:
    """The frame step's primitives for bench/ours.py's profile (one row, its default sampling)."""
    del text, seed  # the count depends on shapes only
    consts, state, plans = frame_state(model, 1, greedy=False)
    out = {}
    for backend, metal in (("CPU", False), ("Metal estimate", True)):
        c = count_frame(model, state, consts, plans, metal=metal, stages=False)["after"]
        top = dict(list(c["by_kind"].items())[:8])
        out[f"frame step ({backend}, compiled)"] = dict(primitives=c["primitives"], kernels=c["kernels"], top=top)
    return out


# ---- the run --------------------------------------------------------------------------------------------------

def scaled_stages(stages: dict, config, layers: int) -> dict:
    """Per-stage counts of a `layers`-deep model scaled to the full depth (layer stages only)."""
    factor = {"talker layers": config.talker.num_hidden_layers / layers,
              "talker KV writes": config.talker.num_hidden_layers / layers,
              "predictor layers": config.code_predictor.num_hidden_layers / layers,
              "predictor KV writes": config.code_predictor.num_hidden_layers / layers}
    return {s: {k: round(v * factor.get(s, 1)) for k, v in c.items()} for s, c in stages.items()}


def run(shapes, batches, modes, stage_layers) -> list[dict]:
    records = []
    for shape in shapes:
        full = build(shape)
        small = full if shape == "tiny" else build(shape, stage_layers)
        for b in batches:
            for mode in modes:
                greedy = mode == "greedy"
                rec = dict(shape=shape, precision="float32" if shape == "tiny" else "8-bit, bf16 activations",
                           batch=b, sampling=mode, **count(full, b, greedy, stages=False))
                split = count(small, b, greedy, stages=True)
                depth = None if small is full else stage_layers
                for backend in ("cpu", "metal"):
                    for when in ("before", "after"):
                        stages = split[backend][when]["stages"]
                        rec[backend][when]["stages"] = scaled_stages(stages, full.config, depth) if depth else stages
                rec["stage_model_layers"] = depth or full.config.talker.num_hidden_layers
                records.append(rec)
                print(table_row(rec), flush=True)
        del full, small
        mx.clear_cache()
    return records


HEADER = ("| model | B | sampling | CPU: primitives before compile | after | Metal est.: primitives before | after | "
          "views | **kernels** |\n|---|---|---|---|---|---|---|---|---|")


def table_row(r) -> str:
    c, m = r["cpu"], r["metal"]
    return (f"| {r['shape']} {r['precision']} | {r['batch']} | {r['sampling']} | {c['before']['primitives']} | "
            f"{c['after']['primitives']} | {m['before']['primitives']} | {m['after']['primitives']} | "
            f"{m['after']['views']} | **{m['after']['kernels']}** |")


def stage_table(r) -> str:
    m = r["metal"]["after"]["stages"]
    lines = [f"Metal kernels by stage, {r['shape']} B={r['batch']} {r['sampling']} "
             f"(split from a {r['stage_model_layers']}-layer model, layer stages scaled):",
             "| stage | kernels | primitives | views |", "|---|---|---|---|"]
    lines += [f"| {s} | {v.get('kernels', 0)} | {v.get('primitives', 0)} | {v.get('views', 0)} |" for s, v in m.items()]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="tiny,0.6b,1.7b")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--modes", default="sampled,greedy")
    ap.add_argument("--stage-layers", type=int, default=2, help="depth of the model the stages are split on")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the records")
    args = ap.parse_args()
    print(HEADER, flush=True)
    records = run(args.shapes.split(","), [int(b) for b in args.batch.split(",")], args.modes.split(","),
                  args.stage_layers)
    for r in records:
        print("\n" + stage_table(r))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(mlx=mx.__version__, records=records), indent=1) + "\n")


if __name__ == "__main__":
    main()
