"""The CIFAR-100 distillation benchmark (CRD / RepDistiller / mdistiller's teacher -> student pairs and
methods): `cifar100.py` at the published scale (GPU), `laptop.py` sized down for a 2-core CPU.

Each file has VARIANTS, one per method x pair, named `<teacher>-<student>-<method>`, and
get_config(variant); `python sweep.py --config=configs/benchmark/<file>.py --workdir=...` runs them
for several seeds, training each teacher once per seed and sharing it with its students, and writes
the report with the benchmark's tables (kd_jax/experiments/report.py). docs/methods.md has the
commands and the methods' sources.
"""
