"""results.md (tables and where we stand against the targets) and results.png from the records."""

import statistics
from pathlib import Path

from common import FRAME_MS
from roofline import analyse


def _find(records, **match):
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _one(records, **match):
    found = _find(records, **match)
    return found[0] if found else None


def _ms(s, digits=1) -> str:
    """median [min–max] of a spread."""
    if not s:
        return "–"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


def ratio(official, ours) -> float:
    """official ÷ ours ms/frame: the median of per-repetition ratios when the two sides ran
    interleaved (each pair saw the same machine load), else the ratio of the medians."""
    a, b = official["ms_per_frame_reps"], ours["ms_per_frame_reps"]
    if official["interleaved"] and ours["interleaved"] and len(a) == len(b):
        return statistics.median(x / y for x, y in zip(a, b))
    return official["ms_per_frame"]["median"] / ours["ms_per_frame"]["median"]


def _noisy(s) -> str:
    """Flags a maximum more than 35 % above the minimum: other jobs loaded the machine meanwhile."""
    return " (noisy)" if s["max"] > 1.35 * s["min"] else ""


def _table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def overhead(records) -> list[str]:
    rows = []
    for ours in _find(records, kind="generate", side="ours", shape="tiny"):
        off = _one(records, kind="generate", side="official", shape="tiny", threads=ours["threads"])
        r = ratio(off, ours) if off else None
        py = ours["python_ms_per_frame"]
        rows.append([ours["threads"], _ms(ours["ms_per_frame"]), _ms(off and off["ms_per_frame"]),
                     f"{r:.1f}×" if r else "–", f"{ours['syncs_per_frame']:.2f}", _ms(py),
                     f"{py['median'] / ours['ms_per_frame']['median']:.0%}"])
    return _table(["threads", "ours ms/frame", "official ms/frame", "official ÷ ours (paired)",
                   "host syncs/frame (ours)",
                   "Python ms/frame (ours)", "Python share"], rows)


def _decode_ms_per_frame(records, side):
    """The codec's one-shot decode time per frame (Codec section), or None."""
    shot = _one(records, kind="codec", side=side, metric="one_shot")
    return shot["seconds"] / shot["frames"] * 1e3 if shot else None


def real_shapes(records) -> list[str]:
    rows = []
    for r in _find(records, kind="generate"):
        if r["shape"] == "tiny":
            continue
        base = _one(records, kind="generate", side="official", shape=r["shape"], threads=r["threads"],
                    precision=r["precision"] if r["precision"] != "8bit" else "float32")
        if r["precision"] == "8bit":
            base = base and {**base, "interleaved": False}  # different cases: no pairing
        ms = r["ms_per_frame"]["median"]
        speedup = f"{ratio(base, r):.2f}×" if base and r["side"] == "ours" else "–"
        decode = _decode_ms_per_frame(records, r["side"])
        rows.append([r["shape"], r["side"], r["precision"], _ms(r["ms_per_frame"], 0) + _noisy(r["ms_per_frame"]),
                     _stages(r), f"{1000 / ms:.2f}", f"{ms / FRAME_MS:.1f}",
                     f"{(ms + decode) / FRAME_MS:.1f}" if decode else "–", _ms(r["prefill_ms"], 0),
                     f"{r['peak_rss_gb']:.2f}" + (f" / {r['peak_mlx_gb']:.2f}" if "peak_mlx_gb" in r else ""), speedup])
    return _table(["shape", "side", "precision", "ms/frame", "synced step ms (official: talker + predictor)",
                   "frames/s", "RTF", "RTF incl. decode", "prefill ms", "peak RSS GB (/ MLX peak)",
                   "official ÷ ours (paired)"], rows)


def _stages(r) -> str:
    """Ours: the compiled frame step synced alone; official: its talker step + code predictor."""
    if "step_ms" in r:
        return _ms(r["step_ms"], 0)
    return f"{r['talker_ms']['median']:.0f} + {r['predictor_ms']['median']:.0f}"


def prefill_by_text(records) -> list[str]:
    run = _one(records, kind="run")
    rows = [[r["shape"], r["side"], r["precision"], *(_ms(r["prefill_by_text_ms"][t], 0) for t in run["prompt_ids"])]
            for r in _find(records, kind="generate") if len(r.get("prefill_by_text_ms", {})) > 1]
    if not rows:
        return []
    return ["Prefill (prompt embedding + the talker's prefill pass) per seed text, ms:", ""] + _table(
        ["shape", "side", "precision", *(f"{t} ({n} ids)" for t, n in run["prompt_ids"].items())], rows)


def profile(records) -> list[str]:
    """Host time per loop phase and primitives per stage, for each profiled case."""
    lines = []
    for r in _find(records, kind="generate", side="ours"):
        prof = r.get("profile")
        if not prof:
            continue
        lines += [f"{r['shape']} {r['precision']}, {r['threads']} thread(s), loop {r['ms_per_frame']['median']:.1f} "
                  "ms/frame. Host (main-thread CPU) and wall time per frame, by phase of the loop body:", ""]
        lines += _table(["phase", "host CPU ms", "wall ms"],
                        [[p, f"{v['cpu_ms']:.2f}", f"{v['wall_ms']:.2f}"] for p, v in prof["host"].items()])
        lines += ["", "Primitives and kernels dispatched per frame (bench/frame_kernels.py; most frequent first):", ""]
        lines += _table(["graph", "primitives", "kernels", "most frequent"],
                        [[g, v["primitives"], v.get("kernels", ""), ", ".join(f"{k} {n}" for k, n in v["top"].items())]
                         for g, v in prof["graphs"].items()])
        lines.append("")
    return lines


def roofline(records) -> list[str]:
    bw = _one(records, kind="bandwidth")
    if not bw:
        return []
    lines = [f"Measured memory bandwidth: **{bw['bandwidth_gb_s']:.1f} GB/s** (best streaming read below). "
             "What each kernel reaches on a 256 MB matrix-vector product (cores busy = CPU time ÷ wall time):", ""]
    lines += _table(["kernel", "GB/s", "cores busy"],
                    [[k, f"{v['gb_s']:.1f}", v["cores_busy"]] for k, v in bw["kernels"].items()])
    rows = [[a["shape"], a["side"], a["precision"], f"{a['bytes_per_frame_gb']:.2f}", f"{a['floor_ms']:.0f}",
             f"{a['measured_ms']:.0f}", f"{a['fraction']:.0%}"] for a in analyse(records) if a["shape"] != "tiny"]
    return lines + [""] + _table(["shape", "side", "precision", "weight GB read/frame", "floor ms/frame",
                                  "measured ms/frame", "fraction of floor"], rows)


def streaming(records) -> list[str]:
    rows = [[s["shape"], _ms(s["first_audio_ms"], 0), _ms(s["prefill_ms"], 0), s["frames_before_first_audio"]]
            for s in _find(records, kind="stream")]
    lines = _table(["shape (talker + codec)", "first audio ms", "prefill ms", "frames before first audio"], rows)
    codec = _find(records, kind="codec")
    if not codec:
        return lines + ["", "Codec: no records (bench/bench_codec.py did not run)."]
    ours, off = _one(codec, side="ours", metric="one_shot"), _one(codec, side="official", metric="one_shot")
    lines += ["", f"Codec decode of {ours['frames']} frames ({ours['audio_s']:.1f} s of audio), one shot: "
              f"ours {ours['seconds']:.2f} s, official {off['seconds']:.2f} s "
              f"(official ÷ ours {off['seconds'] / ours['seconds']:.2f}×)." if off else
              f"Codec decode of {ours['frames']} frames, one shot: ours {ours['seconds']:.2f} s.", ""]
    lines += _table(["chunk frames", "stream total s", "× one-shot", "first chunk ms (fresh state)"],
                    [[c["chunk_frames"], c["seconds"], f"{c['vs_one_shot']:.2f}",
                      (_one(codec, side="ours", metric="first_chunk", frames=c["chunk_frames"]) or {}).get("ms", "–")]
                     for c in _find(codec, side="ours", metric="stream")])
    return lines


def targets(records) -> list[str]:
    lines = []
    for ours in _find(records, kind="generate", side="ours", shape="tiny"):
        off = _one(records, kind="generate", side="official", shape="tiny", threads=ours["threads"])
        if off:
            r = ratio(off, ours)
            lines.append(f"- Overhead regime, {ours['threads']} thread(s): {r:.1f}× faster than the official "
                         f"(target ≥ 5×): **{'met' if r >= 5 else 'missed'}**; host syncs per frame "
                         f"{ours['syncs_per_frame']:.2f} (target ≤ 1): "
                         f"**{'met' if ours['syncs_per_frame'] <= 1 else 'missed'}**.")
    two = _one(records, kind="codec", side="ours", metric="stream", chunk_frames=2)
    if two:
        lines.append(f"- Streaming decode in 2-frame chunks: {two['vs_one_shot']:.2f}× one-shot (target ≤ 1.2×): "
                     f"**{'met' if two['vs_one_shot'] <= 1.2 else 'missed'}**.")
    for s in _find(records, kind="stream"):
        n = s["frames_before_first_audio"]
        lines.append(f"- First audio ({s['shape']}): after prefill + {n} frames (target ≤ 4): "
                     f"**{'met' if n <= 4 else 'missed'}**; {s['first_audio_ms']['median']:.0f} ms.")
    for shape in ("0.6b", "1.7b"):
        ours = _find(records, kind="generate", side="ours", shape=shape)
        if ours:
            best = min(ours, key=lambda r: r["ms_per_frame"]["median"])
            lines.append(f"- Fastest precision of ours at {shape} on this device: **{best['precision']}** "
                         f"({best['ms_per_frame']['median']:.0f} ms/frame).")
    return lines


def environment(records) -> list[str]:
    run = _one(records, kind="run")
    envs = {(r["side"], r["env"].get("impl")): r["env"] for r in records if "env" in r}
    lines = [f"Host: {run['host']['system']} {run['host']['machine']}, {run['host']['cpu']}, "
             f"{run['host']['cpus']} CPUs, Python {run['host']['python']}; started {run['started']}"
             f"{' (--quick)' if run['quick'] else ''}.", ""]
    for (side, impl), env in sorted(envs.items(), key=str):
        lines.append(f"- {side}: " + ", ".join(f"{k} {v}" for k, v in env.items()
                                               if k not in ("system", "machine", "cpu", "cpus", "python")))
    return lines


def render(records, elapsed_s) -> str:
    sections = [("Environment", environment(records)),
                ("Overhead regime (tiny fixture: compute negligible, per-step overhead dominates)",
                 overhead(records)),
                ("Real shapes (random weights in the released layout)", real_shapes(records) + [""] +
                 prefill_by_text(records)),
                ("Where our frame time goes", profile(records)), ("Roofline", roofline(records)),
                ("Streaming and codec", streaming(records)),
                ("Targets", targets(records))]
    out = [f"# Benchmark results ({elapsed_s / 60:.1f} min)", "",
           "ms/frame: median [min–max] over repetitions (steady state, after the first frame). RTF = synthesis "
           "time ÷ audio time, one frame being 80 ms of audio: ms/frame ÷ 80 for generation, plus the codec's "
           "one-shot decode time per frame for 'RTF incl. decode'. Stage times (talker step, code predictor) "
           "are separate measurements with a sync after each stage.", ""]
    for title, body in sections:
        out += [f"## {title}", "", *body, ""]
    return "\n".join(out)


def chart(records, path: Path):
    try:
        import matplotlib
    except ImportError:
        print("note: matplotlib is not installed (pip install matplotlib): no chart")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    tiny = _find(records, kind="generate", shape="tiny")
    labels = sorted({r["threads"] for r in tiny})
    for i, side in enumerate(("ours", "official")):
        vals = [(_one(tiny, side=side, threads=t) or {"ms_per_frame": {"median": 0}})["ms_per_frame"]["median"]
                for t in labels]
        axes[0].bar([x + 0.4 * i for x in range(len(labels))], vals, 0.4, label=side)
    axes[0].set(title="Overhead regime (tiny)", ylabel="ms per frame", xticks=[x + 0.2 for x in range(len(labels))],
                xticklabels=[f"{t} thread(s)" for t in labels])
    axes[0].legend()
    real = [r for r in _find(records, kind="generate") if r["shape"] != "tiny"]
    floors = {(a["side"], a["shape"], a["precision"]): a["floor_ms"] for a in analyse(records)}
    for x, r in enumerate(real):
        t, p = (r["step_ms"]["median"], 0.0) if "step_ms" in r else (r["talker_ms"]["median"],
                                                                    r["predictor_ms"]["median"])
        scale = r["ms_per_frame"]["median"] / (t + p)  # stage split, scaled to the loop's time
        color = "tab:blue" if r["side"] == "ours" else "tab:orange"
        axes[1].bar(x, t * scale, color=color, alpha=0.5)
        axes[1].bar(x, p * scale, bottom=t * scale, color=color)
        if (r["side"], r["shape"], r["precision"]) in floors:
            axes[1].hlines(floors[(r["side"], r["shape"], r["precision"])], x - 0.4, x + 0.4, colors="k")
    axes[1].set(title="Real shapes: ours one step; official talker (light) + predictor; black: floor",
                ylabel="ms per frame",
                xticks=range(len(real)),
                xticklabels=[f"{r['shape']}\n{r['side']}\n{r['precision']}" for r in real])
    axes[1].tick_params(axis="x", labelsize=7)
    chunks = _find(records, kind="codec", side="ours", metric="stream")
    axes[2].bar([str(c["chunk_frames"]) for c in chunks], [c["vs_one_shot"] for c in chunks])
    axes[2].axhline(1.2, color="r", linestyle="--", label="target ≤ 1.2× (2-frame chunks)")
    axes[2].set(title="Streaming decode cost", xlabel="frames per chunk", ylabel="× one-shot decode time")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(records, out: Path, elapsed_s: float):
    (out / "results.md").write_text(render(records, elapsed_s), encoding="utf-8")
    chart(records, out / "results.png")
