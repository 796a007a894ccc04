"""How often long work reports progress."""

PROGRESS_SECONDS = 10.0  # at most this many seconds between two progress lines
