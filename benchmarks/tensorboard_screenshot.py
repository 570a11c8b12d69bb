"""Screenshot of a run's gates in TensorBoard, for the docs.

Starts a real TensorBoard server on the run folder, waits until it serves the run's custom-scalars layout,
and has a headless Chromium load one view and write a PNG::

    python -m hp_rl.train --algo ppo --env MinAtar/Breakout-v1 -n 30000 --tensorboard-log /tmp/shot
    python benchmarks/tensorboard_screenshot.py /tmp/shot --view experts --out docs/img/tensorboard_experts.png

Views (:data:`VIEWS`): ``experts``, the Scalars tab's ``gates/usage`` and ``gates/weight`` charts, where each expert
is a run of its own (its colour, its name in the legend); ``coactivation``, the labelled co-activation image;
``custom_scalars``, the Custom Scalars tab (every expert a line of one chart per quantity).

Needs TensorBoard (a dependency) and Chromium (Debian: ``apt-get install chromium``; ``--chromium PATH``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Flags that keep a headless Chromium off the network (on a closed network its background connections are
# refused, many at a time) and out of any profile.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


# view -> the page's fragment (the classic dashboards read a tag filter and the smoothing from it)
VIEWS = {
    "experts": "#scalars&tagFilter=%5Egates%2F(usage%7Cweight)%24&_smoothingWeight=0",
    "coactivation": "#images&tagFilter=coactivation",
    "custom_scalars": "#custom_scalars",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(port: int, path: str) -> Any:
    """``GET http://127.0.0.1:<port><path>`` as JSON."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def tensorboard_server(logdir: Path, timeout_s: float = 90.0) -> Iterator[int]:
    """A TensorBoard server on ``logdir`` for the block; yields its port once it serves a custom-scalars layout.

    :raises RuntimeError: when it does not within ``timeout_s`` (or exits).
    """
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--load_fast", "false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if get_json(port, "/data/plugin/custom_scalars/layout").get("category"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"TensorBoard did not serve a custom-scalars layout for {logdir}")
            time.sleep(1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def screenshot(url: str, out: Path, chromium: str, width: int, height: int, wait_ms: int) -> Path:
    """Load ``url`` in a headless Chromium and write a ``width`` x ``height`` PNG to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--virtual-time-budget={wait_ms}",  # let the page's scripts fetch and draw the charts
                f"--screenshot={out.resolve()}",
                url,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )
    if not out.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot to {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Start TensorBoard on the run, take the screenshot, stop TensorBoard."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder (or a folder of runs) with TensorBoard events")
    parser.add_argument("--view", choices=sorted(VIEWS), default="experts", help="which page (default: experts)")
    parser.add_argument("--out", type=Path, default=Path("docs/img/tensorboard_experts.png"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1100)
    parser.add_argument("--wait-ms", type=int, default=20_000, help="virtual time the page gets to draw")
    args = parser.parse_args(argv)
    if not Path(args.chromium).is_file():
        print(f"error: no Chromium at {args.chromium}; install it (apt-get install chromium) or give --chromium")
        return 2
    with tensorboard_server(args.run) as port:
        url = f"http://127.0.0.1:{port}/?darkMode=false{VIEWS[args.view]}"
        path = screenshot(url, args.out, args.chromium, args.width, args.height, args.wait_ms)
    print(f"{path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
