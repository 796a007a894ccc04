"""IMDB sentiment: an ensemble of m 2-layer bidirectional LSTMs distilled into one (Stanton et al. 2021,
Table 2, the IMDB rows; variants m1, m3, m5).

Paper, (ensemble test accuracy %, student test accuracy %, test agreement %, test KL) for m = 1 / 3 / 5:
(79.4, 80.4, 86.5, .124) / (81.8, 81.1, 89.8, .064) / (82.2, 81.2, 90.8, .052).

The recipe is the original code's (samuelstanton/gnosis: config/text_classification.yaml,
config/dataset/imdb.yaml, gnosis/utils/data.py get_text_loaders, gnosis/models/lstm.py):
- Data: the 25,000 labelled train and 25,000 test reviews; torchtext's basic_english tokenizer; the
  vocabulary of train tokens seen at least 10 times (min_freq 10, no size cap); the first 100 tokens of
  each review (max_len 100), padded at the end and masked (kd_jax/data/text.py).
- Model: embedding 128, two bidirectional LSTM layers of 70 cells (the paper's text; the repository's
  config/classifier/lstm.yaml default is one layer of 100 cells), a linear layer on the last layer's
  final forward and backward hidden states (kd_jax/models/lstm.py).
- Teachers and student alike: 100 epochs, batch 10, SGD Nesterov momentum 0.9, weight decay 1e-4,
  cosine lr 5e-2 -> 1e-6 (gnosis trains both with one trainer config).
- Distillation: tau = 1 (its distill_loader temp), alpha = 0, the forward KL of Eq. 1, on the
  unaugmented training reviews (the ensemble's logits, which never change, are computed once).
Differences: the cosine is stepped per step instead of per epoch (as in every config of ours); ids 0
(padding) and 1 (out-of-vocabulary) are separate where the original shares id 0 between its '<unk>' and
the padding it masks, so the embedding has one more row (128 parameters).
Teacher i is seeded by its index, so m3's ensemble is m5's first three members.

  python run.py --config=configs/imdb_kd.py:m5 --workdir=runs/imdb/m5
  python sweep.py --config=configs/imdb_kd.py --workdir=runs/imdb --seeds=0,1,2

Data (nothing is downloaded): tensorflow-datasets `imdb_reviews` prepared as array_record in
--config.data.data_dir (`tfds build imdb_reviews --file_format array_record --data_dir DIR` on a machine
with internet), or the original release with --config.data.source=aclimdb
--config.data.path=/path/to/aclImdb (the folder, or aclImdb_v1.tar.gz itself).
"""

from configs.paper import with_variant
from kd_jax import config as kd_config

OVERRIDES = {f"m{m}": {"teacher.ensemble_size": m} for m in (1, 3, 5)}
VARIANTS = tuple(OVERRIDES)


def get_config(variant="m5"):
  config = kd_config.default_config()
  config.data.name = "imdb_reviews"
  config.data.source = "tfds_text"
  config.data.augment = "none"
  config.data.sequence_length = 100
  config.data.vocab_min_count = 10
  config.data.vocab_size = 0

  model = kd_config.model_config(name="bilstm", width=70, embedding_size=128, lstm_layers=2)
  optimizer = kd_config.optimizer_config(learning_rate=5e-2, final_learning_rate=1e-6, momentum=0.9,
                                         nesterov=True, weight_decay=1e-4)
  for phase in (config.teacher, config.student):
    phase.model = kd_config.model_config(**model.to_dict())
    phase.epochs = 100
    phase.batch_size = 10
    phase.optimizer = kd_config.optimizer_config(**optimizer.to_dict())

  config.distill.temperature = 1.0
  config.distill.alpha = 0.0
  config.distill.loss = "forward_kl"
  # 2,500 steps per epoch at batch 10: a progress line every fifth of an epoch, a checkpoint per epoch.
  config.log_every_steps = 500
  config.checkpoint_every_steps = 2500
  return with_variant(config, OVERRIDES, variant)
