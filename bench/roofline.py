"""Roofline: how close the loop gets to the memory-bandwidth floor.

A frame reads every weight of the talker stack once and the code-predictor stack once per code
group (15 times): at batch 1 these matrix-vector products are bound by memory bandwidth, so
floor (ms/frame) = weight bytes read per frame / measured bandwidth, and the fraction reached is
floor / measured ms per frame. `measure_bandwidth` measures the bandwidth and what each precision's
matrix-vector kernel reaches on this device; `analyse` combines them with the generate records.
"""

import time

MATRIX = (8192, 8192)  # 256 MB in float32: far larger than any cache


def _rate(fn, nbytes, reps=5) -> dict:
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    best = min(range(reps), key=wall.__getitem__)
    # process CPU time / wall time ~ the number of cores the kernel kept busy
    return dict(gb_s=nbytes / wall[best] / 1e9, cores_busy=round(cpu[best] / wall[best], 2))


def measure_bandwidth() -> dict:
    import mlx.core as mx
    import numpy as np

    rows, cols = MATRIX
    host = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    w = mx.array(host)
    x = mx.random.normal((1, cols))
    wb, xb = w.astype(mx.bfloat16), x.astype(mx.bfloat16)
    wq, scales, biases = mx.quantize(w, group_size=64, bits=8)
    mx.eval(w, x, wb, xb, wq, scales, biases)
    kernels = {
        "numpy read (sum, 1 thread)": _rate(lambda: host.sum(), host.nbytes),
        "mlx read (sum)": _rate(lambda: mx.eval(w.sum()), w.nbytes),
        "mlx float32 matvec": _rate(lambda: mx.eval(x @ w.T), w.nbytes),
        "mlx bfloat16 matvec": _rate(lambda: mx.eval(xb @ wb.T), wb.nbytes),
        "mlx 8-bit matvec": _rate(lambda: mx.eval(mx.quantized_matmul(x, wq, scales, biases, transpose=True,
                                                                       group_size=64, bits=8)),
                                  wq.nbytes + scales.nbytes + biases.nbytes),
    }
    reads = [v["gb_s"] for k, v in kernels.items() if "read" in k or "float32" in k]
    return dict(bandwidth_gb_s=max(reads), kernels=kernels)


def analyse(records: list[dict]) -> list[dict]:
    """Floor and fraction for every generate record (the official side reads the same weights at
    its element size: float32 bytes from our float32 record, halved for bfloat16)."""
    bw = next((r["bandwidth_gb_s"] for r in records if r["kind"] == "bandwidth"), None)
    if not bw:
        return []
    fp32 = {r["shape"]: r["frame_bytes"]["total"] for r in records
            if r["kind"] == "generate" and r["side"] == "ours" and r["precision"] == "float32"}
    rows = []
    for r in records:
        if r["kind"] != "generate" or r["shape"] not in fp32:
            continue
        nbytes = r["frame_bytes"]["total"] if r["side"] == "ours" else \
            fp32[r["shape"]] * (0.5 if r["precision"] == "bfloat16" else 1.0)
        floor_ms = nbytes / (bw * 1e9) * 1e3
        measured = r["ms_per_frame"]["median"]
        rows.append(dict(side=r["side"], shape=r["shape"], precision=r["precision"], threads=r["threads"],
                         bytes_per_frame_gb=nbytes / 1e9, bandwidth_gb_s=bw, floor_ms=floor_ms,
                         measured_ms=measured, fraction=floor_ms / measured))
    return rows
