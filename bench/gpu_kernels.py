"""Every Plait Triton kernel compiled, checked and timed on a GPU, in one go (one call on a lent H100).

1. Ceilings of this card, measured: device-to-device copy bandwidth (bytes read + written) and a bf16
   8192³ matrix product.
2. `pytest tests/kernels` on CUDA (real Triton compilation; fp32, bf16, fp16; every gradient).
3. Each kernel's forward + backward against its PyTorch reference and its floor: bytes each input read once
   and each output written once ÷ the measured bandwidth, or FLOPs ÷ the measured matrix throughput.
   Launch shapes are swept (`--sweep`) and the best recorded.
4. The linear scans alone (launch swept), then ParaRNN (`bench/pararnn.py`): `triton` against `sequential`
   and `parallel`.
Times are `triton.testing.do_bench` medians (CUDA events) on random inputs. A short table is printed last;
the JSON goes to `--out` (device, versions, shapes, every number).

    python bench/gpu_kernels.py --out bench/results/kernels_h100.json --sweep

On a machine without a package registry (torch, triton, accelerate, peft preinstalled): download here the
pure-Python wheels it lacks (transformers within pyproject's range, datasets, dill, multiprocess; for
bench/gpu_train.py's ZeRO-3 row also deepspeed built with `DS_BUILD_OPS=0 pip wheel --no-deps
--no-build-isolation`, hjson, pydantic, pydantic-core, annotated-types, typing-inspection), then there:
`pip install --no-index --no-deps --target /tmp/site *.whl; export PYTHONPATH=/tmp/site;
pip install --no-deps --no-build-isolation -e .`.

Status: written in a session without a GPU and not yet run on one (no `*_h100.json` exists yet).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from plait.kernels import linear_scan as scan_module
from plait.kernels import lssa as lssa_module
from plait.kernels import polynorm as polynorm_module
from plait.kernels.linear_scan import linear_scan_parallel, linear_scan_triton
from plait.kernels.lssa import lssa_triton
from plait.kernels.polynorm import polynorm_naive, polynorm_triton
from plait.kernels.sinkhorn import sinkhorn_naive, sinkhorn_triton
from plait.kernels.stream_mix import post_res_mix_naive, post_res_mix_triton, pre_mix_naive, pre_mix_triton

ROOT = Path(__file__).resolve().parents[1]
BF16 = torch.bfloat16


def median_ms(fn) -> float:
    return float(do_bench(fn, warmup=50, rep=300, return_mode="median"))


def fwd_bwd(fn, inputs: list[torch.Tensor]):
    """A closure running fn(*inputs) forward and backward (gradients of every leaf input, not accumulated)."""
    leaves = [t for t in inputs if t.requires_grad]
    out = fn(*inputs)
    grad = torch.randn_like(out)

    def step():
        torch.autograd.grad(fn(*inputs), leaves, grad)

    return step


def ceilings() -> dict:
    n_bytes = 2 << 30
    src = torch.randint(0, 255, (n_bytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=BF16) for _ in range(2))
    mm_ms = median_ms(lambda: a @ b)
    return {
        "copy_bytes": 2 * n_bytes,
        "bandwidth_TBps": 2 * n_bytes / copy_ms / 1e9,
        "bf16_matmul_shape": [8192, 8192, 8192],
        "bf16_matmul_TFLOPs": 2 * 8192**3 / mm_ms / 1e9,
    }


def run_kernel_tests() -> dict:
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", str(ROOT / "tests/kernels")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    tail = (result.stdout + result.stderr).strip().splitlines()
    print("\n".join(tail[-40:]), flush=True)
    return {
        "returncode": result.returncode,
        "summary": tail[-1] if tail else "",
        "seconds": time.time() - start,
    }


def floor_ms(ceil: dict, bytes_moved: float = 0.0, flops: float = 0.0) -> dict:
    memory = bytes_moved / (ceil["bandwidth_TBps"] * 1e9)
    compute = flops / (ceil["bf16_matmul_TFLOPs"] * 1e9)
    return {"floor_ms": max(memory, compute), "bound": "memory" if memory >= compute else "compute"}


def bench_polynorm(ceil: dict, rows: int, cols: int, sweep: bool) -> dict:
    x = torch.randn(rows, cols, device="cuda", dtype=BF16, requires_grad=True)
    w = torch.tensor([0.3, -0.2, 0.7], device="cuda", requires_grad=True)
    b = torch.tensor([0.1], device="cuda", requires_grad=True)
    # Forward reads x, writes y; backward reads x and dy, writes dx (the per-row statistics are negligible).
    out = {"shape": [rows, cols], "dtype": "bfloat16", **floor_ms(ceil, bytes_moved=5 * x.numel() * 2)}
    out["eager_ms"] = median_ms(fwd_bwd(polynorm_naive, [x, w, b]))
    try:
        out["compiled_ms"] = median_ms(fwd_bwd(torch.compile(polynorm_naive), [x, w, b]))
    except Exception as error:  # a compile failure is a finding, not a reason to stop the run
        out["compiled_error"] = repr(error)[:300]
    default = polynorm_module._num_warps
    candidates = [default(triton.next_power_of_2(cols))] + ([2, 4, 8, 16, 32] if sweep else [])
    sweep_ms = {}
    for warps in dict.fromkeys(candidates):
        polynorm_module._num_warps = lambda block, warps=warps: warps
        sweep_ms[warps] = median_ms(fwd_bwd(polynorm_triton, [x, w, b]))
    polynorm_module._num_warps = default
    best = min(sweep_ms, key=sweep_ms.get)
    out.update(triton_ms=sweep_ms[candidates[0]], triton_warps=candidates[0], sweep_ms=sweep_ms)
    out.update(best_ms=sweep_ms[best], best_warps=best)
    out["speedup_vs_eager"] = out["eager_ms"] / out["best_ms"]
    out["ratio_to_floor"] = out["best_ms"] / out["floor_ms"]
    return out


def _lssa_step(reweight: bool, q, k, v):
    return fwd_bwd(lambda q, k, v: lssa_triton(q, k, v, reweight=reweight), [q, k, v])


def bench_attention(ceil: dict, batch: int, heads: int, length: int, head_dim: int, sweep: bool) -> dict:
    q, k, v = (
        torch.randn(batch, heads, length, head_dim, device="cuda", dtype=BF16, requires_grad=True)
        for _ in range(3)
    )
    # Causal: the forward's two products and the backward's five over half the L×L square.
    flops = 7 * 2 * batch * heads * head_dim * length * length / 2
    out = {
        "shape": {"batch": batch, "heads": heads, "length": length, "head_dim": head_dim, "causal": True},
        "dtype": "bfloat16",
        **floor_ms(ceil, flops=flops),
    }
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out["sdpa_flash_ms"] = median_ms(
            fwd_bwd(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v])
        )
    default = {phase: dict(options) for phase, options in lssa_module.CUDA_LAUNCH.items()}
    for name, reweight in (("lssa", False), ("lssar", True)):
        lssa_module.CUDA_LAUNCH.update({p: dict(o) for p, o in default.items()})
        row = {"default_ms": median_ms(_lssa_step(reweight, q, k, v)), "launch": default}
        if sweep:
            row["sweep"] = sweep_lssa(reweight, q, k, v)
            best = min(row["sweep"], key=lambda r: r.get("ms", math.inf))
            row["best_ms"], row["best_launch"] = best["ms"], best["launch"]
        else:
            row["best_ms"], row["best_launch"] = row["default_ms"], default
        row["ratio_to_sdpa_flash"] = row["best_ms"] / out["sdpa_flash_ms"]
        row["ratio_to_floor"] = row["best_ms"] / out["floor_ms"]
        out[name] = row
    lssa_module.CUDA_LAUNCH.update(default)
    out["sdpa_ratio_to_floor"] = out["sdpa_flash_ms"] / out["floor_ms"]
    return out


def sweep_lssa(reweight: bool, q, k, v) -> list[dict]:
    """Forward launch swept with the backward at its default, then the backward with the best forward."""
    rows = []
    shapes = [(block, warps, stages) for block in (32, 64, 128) for warps in (4, 8) for stages in (1, 2, 3)]
    best_of = {}
    for phase in ("fwd", "bwd"):
        results = []
        for block, warps, stages in shapes:
            launch = {"block": block, "num_warps": warps, "num_stages": stages}
            lssa_module.CUDA_LAUNCH[phase] = launch
            row = {"phase": phase, "launch": {p: dict(o) for p, o in lssa_module.CUDA_LAUNCH.items()}}
            try:
                row["ms"] = median_ms(_lssa_step(reweight, q, k, v))
            except Exception as error:  # out of shared memory or registers: recorded, not fatal
                row["error"] = repr(error)[:200]
            results.append(row)
            print(json.dumps(row), flush=True)
        ok = [r for r in results if "ms" in r]
        best_of[phase] = min(ok, key=lambda r: r["ms"])["launch"][phase]
        lssa_module.CUDA_LAUNCH[phase] = best_of[phase]
        rows += results
    return rows


def bench_hyper_connections(ceil: dict, tokens: int, n: int, hidden: int) -> dict:
    """The mHC site's mixing (Sinkhorn on [tokens, n, n] logits, pre-mix, post+res-mix; and the whole site
    with an identity sublayer, coefficients included) against one dense transformer layer's step."""
    from plait.modeling import PlaitConfig
    from plait.modeling.hyper_connections import KromHCSite, MHCSite

    out = {"tokens": tokens, "streams": n, "hidden": hidden, "state_dtype": "bfloat16"}
    logits = torch.randn(tokens, n, n, device="cuda", requires_grad=True)
    out["sinkhorn20_naive_ms"] = median_ms(fwd_bwd(lambda t: sinkhorn_naive(t, 20), [logits]))
    out["sinkhorn20_triton_ms"] = median_ms(fwd_bwd(lambda t: sinkhorn_triton(t, 20), [logits]))
    x = torch.randn(tokens, n, hidden, device="cuda", dtype=BF16, requires_grad=True)
    y = torch.randn(tokens, hidden, device="cuda", dtype=BF16, requires_grad=True)
    h_pre, h_post = (torch.rand(tokens, n, device="cuda", requires_grad=True) for _ in range(2))
    h_res = torch.rand(tokens, n, n, device="cuda", requires_grad=True)
    state = x.numel() * 2
    # pre: fwd reads x, writes h; bwd reads x, dh, writes dx.  post+res: fwd reads x, y, writes x';
    # bwd reads x, y, dx', writes dx, dy.
    pre_bytes = 2 * state + 2 * y.numel() * 2
    post_bytes = 4 * state + 3 * y.numel() * 2 + state
    for name, naive, fused, inputs, moved in (
        ("pre_mix", pre_mix_naive, pre_mix_triton, [x, h_pre], pre_bytes),
        ("post_res_mix", post_res_mix_naive, post_res_mix_triton, [x, y, h_post, h_res], post_bytes),
    ):
        out[f"{name}_naive_ms"] = median_ms(fwd_bwd(naive, inputs))
        out[f"{name}_triton_ms"] = median_ms(fwd_bwd(fused, inputs))
        out[f"{name}_floor_ms"] = floor_ms(ceil, bytes_moved=moved)["floor_ms"]
    config_args = dict(vocab_size=256, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=2)
    config_args.update(num_attention_heads=hidden // 128, hc_streams=n)
    for name, cls in (("mhc", MHCSite), ("kromhc", KromHCSite)):
        site = cls(PlaitConfig(**config_args, residual=name), 0).cuda()
        site.init_plait_weights()
        out[f"{name}_site_ms"] = median_ms(fwd_bwd(lambda x, site=site: site(x, lambda h: h), [x]))
    out["dense_layer"] = dense_layer_ms(tokens, hidden)
    out["mhc_site_floor_ms"] = out["pre_mix_floor_ms"] + out["post_res_mix_floor_ms"]
    for name in ("mhc", "kromhc"):
        out[f"{name}_site_overhead"] = out[f"{name}_site_ms"] / out["dense_layer"]["ms"]
    out["floor_overhead"] = out["mhc_site_floor_ms"] / out["dense_layer"]["ms"]
    return out


def dense_layer_ms(tokens: int, hidden: int, seq: int = 4096) -> dict:
    """One Llama-style layer (RMSNorm, QKV, causal flash attention, O, RMSNorm, SwiGLU 8/3·d rounded to 256)
    forward + backward in bf16 on `tokens` tokens."""
    heads, inter = hidden // 128, 256 * math.ceil(8 * hidden / 3 / 256)
    layer = torch.nn.ModuleDict(
        {
            "norm1": torch.nn.RMSNorm(hidden),
            "qkv": torch.nn.Linear(hidden, 3 * hidden, bias=False),
            "o": torch.nn.Linear(hidden, hidden, bias=False),
            "norm2": torch.nn.RMSNorm(hidden),
            "up": torch.nn.Linear(hidden, 2 * inter, bias=False),
            "down": torch.nn.Linear(inter, hidden, bias=False),
        }
    ).to("cuda", BF16)

    def forward(x):
        b = x.shape[0]
        q, k, v = layer["qkv"](layer["norm1"](x)).view(b, seq, 3, heads, 128).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, seq, hidden)
        x = x + layer["o"](a)
        gate, up = layer["up"](layer["norm2"](x)).chunk(2, dim=-1)
        return x + layer["down"](F.silu(gate) * up)

    x = torch.randn(tokens // seq, seq, hidden, device="cuda", dtype=BF16, requires_grad=True)
    return {"ms": median_ms(fwd_bwd(forward, [x])), "intermediate": inter, "heads": heads, "seq": seq}


def bench_scan(ceil: dict, batch: int, length: int, width: int, sweep: bool) -> dict:
    """ParaRNN's inner solve alone (fp32, forward only: it is a plain solve), diagonal and 2×2-block systems,
    against the PyTorch parallel scan and the floor (read A and b once, write h once)."""
    out = {"batch": batch, "length": length, "width": width}
    for kind in ("diag", "block"):
        extra = (2, 2) if kind == "block" else ()
        A = (torch.rand(batch, length, width, *extra, device="cuda") - 0.5) * 1.8 / (2 if extra else 1)
        b = torch.randn(batch, length, width, *extra[:1], device="cuda")
        row = {**floor_ms(ceil, bytes_moved=(A.numel() + 2 * b.numel()) * 4)}
        row["parallel_ms"] = median_ms(lambda A=A, b=b: linear_scan_parallel(A, b))
        default = dict(scan_module.CUDA_LAUNCH[kind])
        row["default_ms"] = median_ms(lambda A=A, b=b: linear_scan_triton(A, b))
        row["default_launch"] = default
        best = (row["default_ms"], default)
        if sweep:
            row["sweep"] = []
            for block_t in (64, 128, 256, 512, 1024):
                for block_d in (16, 32, 64):
                    for warps in (4, 8):
                        launch = {"block_t": block_t, "block_d": block_d, "num_warps": warps}
                        scan_module.CUDA_LAUNCH[kind] = launch
                        try:
                            ms = median_ms(lambda A=A, b=b: linear_scan_triton(A, b))
                        except Exception as error:
                            row["sweep"].append({"launch": launch, "error": repr(error)[:200]})
                            continue
                        row["sweep"].append({"launch": launch, "ms": ms})
                        best = min(best, (ms, launch), key=lambda x: x[0])
            scan_module.CUDA_LAUNCH[kind] = default
        row["best_ms"], row["best_launch"] = best
        row["ratio_to_floor"] = row["best_ms"] / row["floor_ms"]
        out[kind] = row
    return out


def run_pararnn(out_dir: Path) -> dict:
    path = out_dir / "pararnn_gpu.json"
    cmd = [sys.executable, str(ROOT / "bench/pararnn.py"), "--out", str(path), "--repeats", "3"]
    cmd += ["--lengths", "1024", "4096", "8192", "--shapes", "1x256", "1x2048", "--max-iters", "4"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    return json.loads(path.read_text())


def table(report: dict) -> str:
    lines = [
        f"{report['device']}: {report['ceilings']['bandwidth_TBps']:.2f} TB/s copy, "
        f"{report['ceilings']['bf16_matmul_TFLOPs']:.0f} TFLOP/s bf16 matmul",
        f"kernel tests on CUDA: {report.get('kernel_tests', {}).get('summary')}",
    ]
    p = report.get("polynorm", {})
    if "best_ms" in p:
        lines.append(
            f"PolyNorm {p['shape']}: {p['best_ms']:.3f} ms (eager {p['eager_ms']:.3f}, "
            f"{p['speedup_vs_eager']:.1f}x; floor {p['floor_ms']:.3f}, {p['ratio_to_floor']:.2f}x floor)"
        )
    a = report.get("attention", {})
    for name in ("lssa", "lssar"):
        if name in a:
            r = a[name]
            lines.append(
                f"{name.upper()} {a['shape']['length']}: {r['best_ms']:.2f} ms, "
                f"{r['ratio_to_sdpa_flash']:.2f}x SDPA flash ({a['sdpa_flash_ms']:.2f} ms); "
                f"{r['ratio_to_floor']:.2f}x floor"
            )
    h = report.get("hyper_connections", {})
    if "mhc_site_ms" in h:
        lines.append(
            f"mHC site n={h['streams']}: {h['mhc_site_ms']:.2f} ms = {100 * h['mhc_site_overhead']:.1f}% "
            f"of a dense layer ({h['dense_layer']['ms']:.2f} ms); kromhc "
            f"{100 * h['kromhc_site_overhead']:.1f}%; floor {100 * h['floor_overhead']:.1f}%"
        )
    for kind in ("diag", "block"):
        r = report.get("scan", {}).get(kind)
        if r:
            lines.append(
                f"scan {kind} 4x4096x2048 fp32: {r['best_ms']:.3f} ms ({r['ratio_to_floor']:.2f}x floor), "
                f"parallel PyTorch {r['parallel_ms']:.3f} ms"
            )
    for row in report.get("pararnn", {}).get("results", []):
        if row["length"] == 4096:
            lines.append(
                f"ParaRNN {row['cell']} T=4096 width {row['width']}: triton "
                f"{row.get('triton_speedup', float('nan')):.0f}x sequential, parallel "
                f"{row['parallel_speedup']:.0f}x"
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--sweep", action="store_true", help="sweep launch shapes (LSSA, PolyNorm, scans)")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="parts to skip: kernel_tests polynorm attention hyper_connections scan pararnn",
    )
    args = parser.parse_args()
    assert torch.cuda.is_available(), "bench/gpu_kernels.py needs a CUDA GPU"
    torch.manual_seed(0)
    out_path = Path(args.out)
    report = {
        "benchmark": "Plait Triton kernels on CUDA: tests, fwd+bwd times, floors",
        "device": torch.cuda.get_device_name(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": triton.__version__,
        },
        "timing": "triton.testing.do_bench median (warmup 50 ms, rep 300 ms), fwd + bwd, random inputs",
        "ceilings": ceilings(),
    }
    ceil = report["ceilings"]
    print(json.dumps(ceil), flush=True)

    def part(name, fn):
        if name in args.skip:
            return
        start = time.time()
        try:
            report[name] = fn()
        except Exception as error:
            report[name] = {"error": repr(error)[:2000]}
        print(f"[{name}: {time.time() - start:.0f} s] {json.dumps(report[name])[:3000]}", flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1))

    part("kernel_tests", run_kernel_tests)
    part("polynorm", lambda: bench_polynorm(ceil, 16384, 4096, args.sweep))
    part("attention", lambda: bench_attention(ceil, 2, 16, 8192, 128, args.sweep))
    part("hyper_connections", lambda: bench_hyper_connections(ceil, 16384, 4, 4096))
    part("scan", lambda: bench_scan(ceil, 4, 4096, 2048, args.sweep))
    part("pararnn", lambda: run_pararnn(out_path.parent))
    print(table(report), flush=True)


if __name__ == "__main__":
    main()
