"""How often long work shows that it is still going.

Work that runs for a while without reaching a logged step or a result (decoding a dataset, a pass
over a split, a long phase between log lines) prints a progress line at most PROGRESS_SECONDS apart,
so that a user watching the output never waits longer than this without news.
"""

PROGRESS_SECONDS = 10.0
