"""Pages in a real headless Chromium (Debian's ``chromium``), for tests of HTML pages.

:func:`find_chromium` says where the browser is, or ``None``; :func:`chromium_or_skip`
is the same for a test (skipped without a browser, failed when ``CI`` is set).
:func:`laid_out` opens a copy of a page with a script appended and returns the DOM after
layout: the script can write what it measured (sizes, overflows) into attributes that the
test then reads::

    dom = laid_out(browser, page, PROBE, tmp_path)
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Final

__all__ = ["HEADLESS_FLAGS", "chromium_or_skip", "find_chromium", "laid_out"]

_NAMES: Final = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HEADLESS_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on the ``PATH``, or ``None``."""
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_or_skip() -> str:
    """The browser for a test: skips it without one, or fails it when ``CI`` is set."""
    import os

    import pytest

    found = find_chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed: CI must install Debian's chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


def laid_out(
    browser: str,
    page: Path,
    script: str,
    workdir: Path,
    *,
    window: tuple[int, int] = (1280, 2000),
    timeout: float = 90.0,
) -> str:
    """The DOM of ``page`` with ``script`` run after it, as headless Chromium laid it out.

    Args:
        browser: the executable (:func:`find_chromium`).
        page: the HTML file; it is not modified (a copy in ``workdir`` is opened).
        script: HTML appended before ``</body>`` (a ``<script>`` element).
        workdir: a directory for the copy and the browser's profile.
        window: the window's width and height in pixels.
        timeout: seconds before the browser is given up on.

    Returns:
        The serialized DOM.

    Raises:
        RuntimeError: the browser failed (its last output is in the message).
    """
    probed = workdir / f"probed-{page.name}"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", script + "</body>"))
    command = [
        browser,
        *HEADLESS_FLAGS,
        f"--user-data-dir={workdir / 'chromium-profile'}",
        f"--window-size={window[0]},{window[1]}",
        "--dump-dom",
        probed.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout
