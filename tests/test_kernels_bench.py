"""The kernel benchmark runs end to end (on the CPU: the reference rows) and its rows are well formed."""
from arcfast.bench import bench_kernels
from arcfast.bench.runner import Context, format_table


def test_kernel_benchmark_quick_cpu():
    rows = bench_kernels.run(Context(quick=True, device="cpu"))
    assert rows and all(r.bench == "kernels" and r.unit == "us" and r.value > 0 for r in rows)
    assert {"lora_delta_reference fwd, 16 adapters, d=64->256, r=8"} <= {r.case for r in rows}
    assert "kernels" in format_table(rows)
