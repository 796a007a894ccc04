"""tests/conftest.py's tiny digits study as a config file, for tests that drive run.py itself.

  python run.py --config=tests/tiny_config.py --workdir=/tmp/tiny
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import tiny_config  # noqa: E402


def get_config():
  return tiny_config()
