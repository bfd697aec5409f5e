"""DDIM sampler throughput (the same benchmark as ``sodp bench sampler``; code in sodp_fast/bench.py).

    python benchmarks/bench_sampler.py --out profiles/<date>-<device>-sampler           # GPU: full sweep
    python benchmarks/bench_sampler.py --device cpu --out profiles/<date>-cpu-sampler  # CPU: eager, compile, cpp
    python benchmarks/bench_sampler.py --device cpu --presets tiny --batch-sizes 1,8 --variants eager,ours-cpp
"""
import sys

from sodp_fast.bench import main

if __name__ == "__main__":
    sys.exit(main())
