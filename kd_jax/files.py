"""Writing files so that a crash, a kill or a full disk never leaves a half-written one behind.

Every file kd_jax writes whole (config.json, results.json, reports, plots) goes to a temporary file in
the same folder first and replaces the target with os.replace, which is atomic on POSIX file systems:
readers see the old file or the new one, never an empty or truncated one. Files get the mode open()
gives (0666 less the umask). metrics.jsonl is appended to instead; its readers skip a last line cut
short.
"""

import contextlib
import json
import os
import secrets


def _create_temporary(path: str) -> str:
  """A new empty file beside `path`, named .<name>.<random>.tmp, with the mode a plain open() would
  give it (0666 less the umask; tempfile.mkstemp's files are 0600 whatever the umask)."""
  folder, name = os.path.split(os.path.abspath(path))
  while True:
    temporary = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
      os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
      return temporary
    except FileExistsError:
      continue


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path`; on success it replaces `path`, on failure it is removed."""
  temporary = _create_temporary(path)
  try:
    yield temporary
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    raise


def write_text(path: str, text: str) -> None:
  with atomic_path(path) as temporary:
    with open(temporary, "w", encoding="utf-8", newline="") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())


def write_json(path: str, value, sort_keys: bool = False) -> None:
  """JSON without NaN or Infinity tokens (not valid JSON): a non-finite number raises ValueError."""
  write_text(path, json.dumps(value, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n")


def read_jsonl(path: str) -> list:
  """The records of a JSON-lines file; a line that does not parse (cut short by a kill) is skipped."""
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records
