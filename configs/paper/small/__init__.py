"""The laptop-scale reproduction suite: one experiment file per claim group of Stanton et al. (2021),
sized so that all of them for three seeds finish within three hours on a 2-core CPU.

  python -m kd_jax.reproduce --suite=configs/paper/small --workdir=runs/small --seeds=0,1,2

Every file has VARIANTS and get_config(variant) like configs/paper/*.py, and its docstring names the
claim, the paper's figure and numbers, and the paper-scale command. Files starting with '_' are
shared bases, not experiments; claims.py is not an experiment either: it maps each claim to these
runs, and the suite runner (kd_jax/experiments/suite.py) computes each claim's verdict from it.
"""
