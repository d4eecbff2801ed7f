"""Scripts run in a fresh interpreter report on one line that starts with ``RESULT `` (JSON,
or a sentence); the helpers here run them and read that line, for every test file."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_env(**extra):
    """The environment of a child process: the package importable, TensorFlow's logging quiet,
    ``extra`` added."""
    return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", **extra)


def result_line(output):
    """The last line of ``output`` starting with ``RESULT ``; None without one."""
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return lines[-1] if lines else None


def run_script(source, timeout, **env):
    """Runs ``source`` with ``python -c`` in the repository root and returns the JSON of its
    ``RESULT`` line; an ``AssertionError`` with the script's output when it printed none."""
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT, env=script_env(**env))
    line = result_line(result.stdout)
    assert line, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(line[len("RESULT "):])
