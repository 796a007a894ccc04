"""kd_jax/metrics_log.py under faults: appending after a kill cut the last record short."""

import json

from kd_jax import metrics_log


def _lines(path):
  return path.read_text().splitlines()


def test_a_record_cut_short_is_dropped_before_the_next_append(tmp_path):
  path = tmp_path / "metrics.jsonl"
  whole = [json.dumps({"phase": "student", "step": step, "loss": 1.0}) for step in (4, 8)]
  path.write_text("\n".join(whole) + '\n{"phase": "student", "step": 12, "lo')
  log = metrics_log.MetricsLog(str(tmp_path), tensorboard=False)
  log.write({"event": "resume"})
  log.write({"phase": "student", "step": 12, "loss": 0.5})
  lines = _lines(path)
  assert lines[:2] == whole
  assert [json.loads(line).get("step") for line in lines] == [4, 8, None, 12]


def test_a_file_of_one_partial_line_becomes_empty_before_the_append(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"event": "sta')
  metrics_log.MetricsLog(str(tmp_path), tensorboard=False).write({"event": "start"})
  assert [json.loads(line)["event"] for line in _lines(tmp_path / "metrics.jsonl")] == ["start"]


def test_whole_files_and_missing_files_are_appended_to_as_they_are(tmp_path):
  path = tmp_path / "metrics.jsonl"
  log = metrics_log.MetricsLog(str(tmp_path), tensorboard=False)
  log.write({"event": "start"})
  before = path.read_text()
  metrics_log.MetricsLog(str(tmp_path), tensorboard=False).write({"event": "resume"})
  assert path.read_text().startswith(before) and len(_lines(path)) == 2
