"""A real headless Chromium for the console's tests: Debian's `chromium` driven through its
`chromium-driver` (/usr/bin/chromedriver) by Selenium.

Why Selenium and not Playwright: Playwright's Python package drives the browser through a
Node.js driver of its own and is built against its own browser builds (fetched from the
internet by `playwright install`); Debian's chromedriver is made for Debian's chromium of
the same version, and Selenium is pure Python. `scripts/install-chromium.sh` installs both
packages where apt-get works; `unavailable_reason()` says why the tests skip elsewhere.

The browser's console is read through chromedriver's log (`goog:loggingPrefs`): anything
at SEVERE (an uncaught exception, a failed request, a CSP violation) counts as an error.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


def unavailable_reason() -> str | None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return ("CHROMIUM MISSING: no /usr/bin/chromium or /usr/bin/chromedriver (Debian "
                "packages chromium and chromium-driver; scripts/install-chromium.sh installs "
                "them where apt-get works)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "SELENIUM MISSING: pip install -e '.[dev]'"
    return None


class Browser:
    def __init__(self, profile: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        for flag in FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={profile}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
        self.driver.set_page_load_timeout(30)
        self.seen: list[dict[str, Any]] = []

    def console(self) -> list[dict[str, Any]]:
        """Every console entry since the last call (and kept in `seen`)."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        self.seen.extend(entries)
        return entries

    def errors(self) -> list[str]:
        return [str(e["message"]) for e in self.console() if e.get("level") == "SEVERE"]

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                last = pred()
                if last:
                    return last
            time.sleep(0.2)
        raise AssertionError(f"browser: no {what} after {timeout:.0f} s (last: {last!r})")

    def text(self, css: str) -> str:
        return str(self.js("const e = document.querySelector(arguments[0]);"
                           "return e ? e.textContent : null;", css) or "")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        height = int(self.js("return Math.min(3000, document.documentElement.scrollHeight)"))
        self.driver.set_window_size(1400, max(700, height))
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1400, 1000)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.driver.quit()


@contextlib.contextmanager
def browser() -> Iterator[Browser]:
    profile = Path(tempfile.mkdtemp(prefix="console-chromium-"))
    b = Browser(profile)
    try:
        yield b
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)
