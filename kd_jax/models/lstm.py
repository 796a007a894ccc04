"""The paper's IMDB classifier: a stacked bidirectional LSTM over token ids (Stanton et al. 2021, Table 2).

As the original code (samuelstanton/gnosis, gnosis/models/lstm.py, a torch.nn.LSTM over packed padded
sequences): embedding -> `layers` bidirectional LSTM layers -> a linear layer on the top layer's final
hidden states, the forward direction's after the review's last token and the backward direction's
after its first, concatenated. Padding (`pad_id`, at the end of each review) is masked out by the
sequence lengths: neither direction reads it, so a review's logits do not depend on how much
padding follows it.

Initialization as PyTorch's: embedding N(0, 1); every LSTM weight U(-k, k) with k = 1/sqrt(cell size)
and the gates' bias the sum of two such draws (PyTorch has an input and a hidden bias); the output
layer U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and bias.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp



def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _two_uniforms(bound: float):
  """PyTorch's b_ih + b_hh, each U(-bound, bound), as one bias."""
  def init(key, shape, dtype=jnp.float32):
    first, second = jax.random.split(key)
    return _uniform(bound)(first, shape, dtype) + _uniform(bound)(second, shape, dtype)
  return init


class BiLSTM(nn.Module):
  """(N, L) int32 token ids -> float32 logits (N, num_classes).

  Sows 'stage{i}' (i = 1..layers): layer i's final states [forward after the last token, backward
  after the first], (N, 2 * cell_size).
  """
  num_classes: int
  num_tokens: int  # rows of the embedding: padding, out-of-vocabulary and the vocabulary
  embedding_size: int = 128
  cell_size: int = 70
  layers: int = 2
  dtype: Any = jnp.float32
  pad_id: int = 0  # the token id of padding: kd_jax.data.text.PAD_ID (tested)

  input_dtype = jnp.int32  # token ids; kd_jax.train.dummy_input initializes with these

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    del train  # No dropout or batch statistics.
    # Padding sits at the end, so the real length is the count of other ids. An all-padding review
    # (nothing left after tokenization) reads its first position, the padding embedding.
    lengths = jnp.maximum(jnp.sum(tokens != self.pad_id, axis=-1), 1)
    x = nn.Embed(self.num_tokens, self.embedding_size, dtype=self.dtype,
                 embedding_init=nn.initializers.normal(1.0))(tokens)
    bound = self.cell_size ** -0.5

    def lstm(name):
      cell = nn.OptimizedLSTMCell(
          self.cell_size, dtype=self.dtype, kernel_init=_uniform(bound),
          recurrent_kernel_init=_uniform(bound), bias_init=_two_uniforms(bound), name=name)
      return nn.RNN(cell)

    for layer in range(1, self.layers + 1):
      # Each direction's carry is (c, h) after the sequence's last real step (its first, backwards).
      ((_, forward_h), (_, backward_h)), x = nn.Bidirectional(
          lstm(f'layer{layer}_forward'), lstm(f'layer{layer}_backward'), return_carry=True)(
              x, seq_lengths=lengths)
      final = jnp.concatenate([forward_h, backward_h], axis=-1)
      self.sow('intermediates', f'stage{layer}', final)
    fan_in = 2 * self.cell_size
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_uniform(fan_in ** -0.5),
                      bias_init=_uniform(fan_in ** -0.5))(final)
    return logits.astype(jnp.float32)
