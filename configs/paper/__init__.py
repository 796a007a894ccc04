"""Experiment configs of Stanton et al. (2021): one file per figure or table, one variant per setting.

Each file has `VARIANTS` and `get_config(variant)`; run one variant with
`python run.py --config=configs/paper/<file>.py:<variant> --workdir=...`, or all of them (and several
seeds) with `python sweep.py --config=configs/paper/<file>.py --workdir=runs/<file>`.
"""


def with_variant(config, overrides_by_variant: dict, variant):
  """Applies the dotted-key overrides of `variant` to `config`."""
  if variant not in overrides_by_variant:
    raise ValueError(f"variant {variant!r} is not one of {', '.join(overrides_by_variant)}; "
                     "pass --config=<file>.py:<variant>")
  for key, value in overrides_by_variant[variant].items():
    *parents, field = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[field] = value
  return config
