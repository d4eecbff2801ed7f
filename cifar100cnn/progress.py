"""What a CLI run shows while the notebooks execute: the notebook, the step (the heading of the
running cell), the epochs of a training with an estimate of the time left, one line per
reused or skipped model. The notebooks' full output goes to their executed copies."""

import re
import sys
import time

ENGINE = "cifar100cnn-progress"
EPOCH = re.compile(r"^Epoch (\d+)/(\d+)\s*$")
# Keras' one line per epoch (verbose=2): "79/79 - 250s - 3s/step - accuracy: 0.41 - ... "
EPOCH_END = re.compile(r"^\d+/\d+ - \d+m?s\b")
VAL_ACCURACY = re.compile(r"val_accuracy: ([0-9.]+)")
# Lines of the notebooks worth a line in the terminal as they are.
FORWARDED = re.compile(r"^(Reusing |Skipped|Trained )")
LONG = 30  # seconds: steps that took longer in the previous run show their duration


def duration(seconds):
    """``seconds`` as "42 s", "3.5 min" or "1.2 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def step_title(cells, index):
    """The heading of code cell ``index``: the last section heading above it and the markdown
    text right above it (its first line, without markdown marks)."""
    section, note, after_code = "", "", False
    for cell in cells[:index][::-1]:
        if cell.get("cell_type") != "markdown":
            after_code = True  # a note above an earlier code cell belongs to that cell
            continue
        text = "".join(cell.get("source", "")).strip()
        first = text.splitlines()[0] if text else ""
        plain = first.lstrip("#").strip().replace("**", "").strip()
        if first.startswith("#"):
            section = plain
            break
        if not note and not after_code:
            note = re.split(r"(?<=[.:?])\s", plain, maxsplit=1)[0].rstrip(".:")
    title = f"{section}: {note}" if section and note else section or note or "(no heading)"
    return title if len(title) <= 90 else title[:89] + "…"


class Progress:
    """Receives papermill's cell starts and the kernel's stdout; prints progress to ``out``.

    Args:
        name: the notebook's file name.
        number, total: its place in the run (1-based) and the number of notebooks.
        out: where to print (default ``sys.stdout``).
        estimates: seconds per code cell source in an earlier run (``runner.previous_durations``).
        earlier: what that run is called on the terminal (default "previous run").
        clock: a function returning seconds (default ``time.monotonic``).
    """

    def __init__(self, name, number=1, total=1, out=None, estimates=None, earlier="previous run",
                 clock=time.monotonic):
        self.name, self.number, self.total = name, number, total
        self.out = out or sys.stdout
        self.estimates, self.earlier = estimates or {}, earlier
        self.clock = clock
        self.started = None
        self.step = self.steps = 0
        self.cell_started = None
        self.epoch = None
        self.buffer = ""

    def _print(self, text):
        print(text, file=self.out, flush=True)

    def cell_start(self, cells, index):
        """Papermill is about to run cell ``index`` of ``cells``."""
        now = self.clock()
        if self.started is None:
            self.started = now
            self.steps = sum(cell.get("cell_type") == "code" for cell in cells)
            self._print(f"\n[{self.number}/{self.total}] {self.name}")
        self._end_step(now)
        cell = cells[index]
        if cell.get("cell_type") != "code":
            return
        self.step += 1
        self.cell_started, self.epoch = now, None
        line = f"  step {self.step}/{self.steps}: {step_title(cells, index)}"
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            line = f"  step {self.step}/{self.steps}: parameters of this run"
        earlier = self.estimates.get("".join(cell.get("source", "")))
        if earlier and earlier >= LONG:
            line += f" (took {duration(earlier)} in the {self.earlier})"
        self._print(line)

    def _end_step(self, now):
        if self.cell_started is not None and now - self.cell_started >= LONG:
            self._print(f"    done in {duration(now - self.cell_started)}")
        self.cell_started = None

    def write(self, text):
        """The kernel's stdout (papermill's ``stdout_file``)."""
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self._line(line.rstrip("\r"))

    def flush(self):
        pass

    def _line(self, line):
        now = self.clock()
        match = EPOCH.match(line)
        if match:
            done, total = int(match.group(1)), int(match.group(2))
            if self.epoch is None or done <= self.epoch["done"] or total != self.epoch["total"]:
                # A new training (a resumed one starts after epoch 1: count the epochs run here).
                self.epoch = {"began": now, "first": done, "total": total}
            self.epoch.update(done=done, started=now)
            return
        match = EPOCH_END.match(line)
        if match and self.epoch is not None:
            done, total = self.epoch["done"], self.epoch["total"]
            per_epoch = (now - self.epoch["began"]) / (done - self.epoch["first"] + 1)
            found = VAL_ACCURACY.search(line)
            accuracy = f", val_accuracy {float(found.group(1)):.4f}" if found else ""
            left = f", about {duration(per_epoch * (total - done))} left" if done < total else ""
            self._print(f"    epoch {done}/{total}{accuracy} ({duration(now - self.epoch['started'])}{left})")
            return
        if FORWARDED.match(line):
            self._print(f"    {line}")

    def stop(self):
        """The notebook ended (or failed): the last step's time; returns the notebook's."""
        now = self.clock()
        self._end_step(now)
        if self.buffer:
            self._line(self.buffer)
            self.buffer = ""
        return 0.0 if self.started is None else now - self.started


def engine_arguments(reporter):
    """Keyword arguments of ``papermill.execute_notebook`` that send its cell starts and the
    kernel's stdout to ``reporter``."""
    _register()
    _ProgressEngine.reporter = reporter
    return {"engine_name": ENGINE, "stdout_file": reporter}


_ProgressEngine = None


def _register():
    global _ProgressEngine
    if _ProgressEngine is not None:
        return
    from papermill.engines import NBClientEngine, papermill_engines

    class ProgressEngine(NBClientEngine):
        """papermill's nbclient engine, telling ``reporter`` when each cell starts."""

        reporter = None

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            reporter, cell_start = cls.reporter, nb_man.cell_start

            def announce(cell, cell_index=None, **more):
                reporter.cell_start(nb_man.nb.cells, cell_index)
                return cell_start(cell, cell_index, **more)

            nb_man.cell_start = announce
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE, ProgressEngine)
    _ProgressEngine = ProgressEngine
