"""Screenshots of a study in the MLflow UI, by headless Chromium driven over its DevTools pipe (stdlib only).

The screenshots in docs/ are of the default study; to retake them after it has run (a fresh results/):

    python -m study.run                      # the default study: results/mlflow.db, experiment "default"
    mlflow ui --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 --port 5000 &
    python docs/screenshots.py --ui http://127.0.0.1:5000 --experiment default
    kill %1                                  # the mlflow ui started above

Needs Chromium (optional, not for the tests or CI; Debian: apt-get install chromium). Writes docs/mlflow_runs.png
(the runs, unfolded, with the objectives' chosen values as columns), docs/mlflow_charts.png (the chart view:
its first section, the objectives per epoch) and docs/mlflow_pareto.png (the parent's pareto.png, or
best_so_far.png with one objective). The study's newest parent run is the one shown.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from PIL import Image

from study.tracking.keys import mlflow_key, objective_names

DOCS = Path(__file__).resolve().parent
TRAINING_VIEW = "workflowType=machine_learning"  # MLflow 3.17's UI picks GenAI or training views by this switch
SHOWN_TEST = "test/pixel_auroc"  # beside the objectives' chosen values (study.tracking.keys names)
HIDDEN_COLUMNS = ("Source",)  # shown by default in MLflow 3.17 ("python -m study.run" on every row): room for metrics
EXPAND_RUN = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'  # the +/- beside a parent run's name
POPOVER = "[data-radix-popper-content-wrapper]"


class Browser:
    """One headless Chromium page, spoken to with DevTools protocol messages over fds 3 and 4."""

    def __init__(self, width: int, height: int) -> None:
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()

        def fds() -> None:  # Chromium reads commands on fd 3 and writes answers on fd 4
            reading, writing = os.dup(to_chrome), os.dup(from_chrome)  # above 4, so neither is overwritten
            os.dup2(reading, 3)
            os.dup2(writing, 4)

        args = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        args += ["--remote-debugging-pipe", f"--window-size={width},{height}", "about:blank"]
        self.process = subprocess.Popen(args, preexec_fn=fds, close_fds=False, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._next = 0
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session and hasattr(self, "session"):
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                self._buffer += os.read(self._read, 1 << 20)
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def run(self, script: str) -> Any:
        """Evaluate JavaScript in the page (promises awaited) and return its value."""
        result = self.send("Runtime.evaluate", expression=script, awaitPromise=True, returnByValue=True)
        return result.get("result", {}).get("value")

    def open(self, url: str, ready: str, settle_s: float = 3) -> None:
        """Load `url` and wait until the JavaScript condition `ready` holds (the UI fetches its data after load)."""
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + 180
        while not self.run(f"Boolean({ready})"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: not ready after 180 s ({ready})")
            time.sleep(1)
        time.sleep(settle_s)

    def shot(self, path: Path, colours: int = 96) -> None:
        """Save the page as a PNG with a small palette (screen text and flat UI colours survive it well)."""
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        image = Image.open(io.BytesIO(data)).convert("RGB")
        small = image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(path, optimize=True)
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")

    def click_text(self, text: str, within: str = "body") -> None:
        """Click the innermost element under `within` whose text is exactly `text` (waiting up to 60 s for it)."""
        script = f"""(() => {{
          const all = Array.from(document.querySelectorAll({json.dumps(within)} + ' *'));
          const hit = all.filter(e => e.innerText && e.innerText.trim() === {json.dumps(text)}).pop();
          if (hit) {{ hit.click(); return true; }} return false; }})()"""
        deadline = time.monotonic() + 60
        while not self.run(script):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no element with text {text!r} under {within}")
            time.sleep(1)
        time.sleep(1.5)

    def drag(self, x: float, y: float, dx: float) -> None:
        """Press the mouse at (x, y), move it dx to the right, release (e.g. to widen a table column)."""
        steps = (("mousePressed", x), ("mouseMoved", x + dx / 2), ("mouseMoved", x + dx), ("mouseReleased", x + dx))
        for kind, at in steps:
            self.send("Input.dispatchMouseEvent", type=kind, x=at, y=y, button="left", buttons=1, clickCount=1)
        time.sleep(1)

    def escape(self) -> None:
        self.send("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape", windowsVirtualKeyCode=27)
        time.sleep(1)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def runs_view(browser: Browser, ui: str, experiment_id: str, columns: list[str], path: Path) -> None:
    """The experiment's runs: the study's parent expanded, the objectives' chosen values and a test metric as
    columns."""
    expand = f"document.querySelector({json.dumps(EXPAND_RUN)})"
    browser.open(f"{ui}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}", expand)
    browser.run("document.querySelectorAll('button[aria-label=Close]').forEach(b => b.click())")  # the assistant
    browser.run(f"{expand}.click()")
    time.sleep(2)
    browser.click_text("Columns")
    for column in (*columns, *HIDDEN_COLUMNS):  # each click toggles the column
        browser.click_text(column, POPOVER)
    browser.escape()
    for column in columns:  # full metric names: "chosen/val_pixel_auroc"
        widen(browser, column, 90)
    widen(browser, "Run Name", 120)  # room for run names such as "03 caae λ=1.00 lr=0.0003"
    browser.shot(path)


def widen(browser: Browser, header: str, by: float) -> None:
    """Drag the right edge of the runs table's column headed ``header`` ``by`` pixels to the right."""
    edge = browser.run(
        f"""(() => {{ const cell = Array.from(document.querySelectorAll('.ag-header-cell'))
             .find(e => e.innerText.trim() === {json.dumps(header)});
           if (!cell) return null; const box = cell.getBoundingClientRect();
           return [box.right - 2, box.top + box.height / 2]; }})()"""
    )
    if edge is None:
        raise RuntimeError(f"no runs-table column headed {header!r}")
    browser.drag(edge[0], edge[1], by)


def chart_view(browser: Browser, ui: str, experiment_id: str, path: Path) -> None:
    """The chart view of the runs unfolded above: it opens on the objectives' per-epoch curves (1_objectives)."""
    browser.open(
        f"{ui}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}&compareRunsMode=CHART",
        "document.querySelector('.js-plotly-plot')",
        5,
    )
    browser.run("document.querySelectorAll('button[aria-label=Close]').forEach(b => b.click())")
    time.sleep(1)
    browser.shot(path)


def run_artifact(browser: Browser, ui: str, experiment_id: str, run_id: str, artifact: str, path: Path) -> None:
    """One artifact of a run as MLflow's artifact viewer shows it."""
    url = f"{ui}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{artifact}?{TRAINING_VIEW}"
    browser.open(url, "Array.from(document.images).some(i => i.complete && i.naturalWidth > 300)")
    browser.run("document.querySelectorAll('button[aria-label=Close]').forEach(b => b.click())")
    time.sleep(1)
    browser.shot(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", default="http://127.0.0.1:5000", help="a running `mlflow ui` (its REST API too)")
    parser.add_argument("--experiment", required=True, help="the study's experiment name")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    client = MlflowClient(args.ui)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"{args.ui}: no experiment named {args.experiment!r} (the study's name)")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.role = 'study'", max_results=1)
    objectives = objective_names(parent.data.params["objectives"])
    plot = "pareto.png" if len(objectives) > 1 else "best_so_far.png"
    columns = [mlflow_key(name, final=True) for name in objectives] + [SHOWN_TEST]
    browser = Browser(1900, 560)  # three metric columns (two objectives, a test metric) beside the run names
    try:
        experiment_id = experiment.experiment_id
        runs_view(browser, args.ui, experiment_id, columns, args.out / "mlflow_runs.png")
        browser.send("Emulation.setDeviceMetricsOverride", width=1600, height=900, deviceScaleFactor=1, mobile=False)
        chart_view(browser, args.ui, experiment_id, args.out / "mlflow_charts.png")
        browser.send("Emulation.setDeviceMetricsOverride", width=1200, height=740, deviceScaleFactor=1, mobile=False)
        run_artifact(browser, args.ui, experiment_id, parent.info.run_id, plot, args.out / "mlflow_pareto.png")
    finally:
        browser.close()


if __name__ == "__main__":
    main()
