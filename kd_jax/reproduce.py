"""`python -m kd_jax.reproduce`: the reproduction suite, verdicts (kd_jax/experiments/suite.py)."""
from kd_jax.experiments.suite import main
if __name__ == "__main__":
  main()
