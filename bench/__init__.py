"""ltc_fast benchmarks: `pytest bench/ --benchmark` (real sizes, timing, results JSON) or `pytest bench/`
(tiny sizes, one run each: a smoke test that keeps the suite from rotting)."""
