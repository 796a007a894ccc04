"""`python -m kd_jax.report`: the report over finished runs (kd_jax/experiments/report.py)."""
from kd_jax.experiments.report import main
if __name__ == "__main__":
  main()
