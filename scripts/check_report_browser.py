"""Render a report.html in headless Chromium: take a screenshot and check that it renders cleanly.

    python scripts/check_report_browser.py data/report/report.html --screenshot out.png

Two Chromium runs, each with a fresh profile folder:
1. --dump-dom with console logging on stderr: the page must log no console error (the report has
   no scripts, so any console message about an error or a failed load is a bug), and the rendered
   DOM must hold the figures (<svg>) and tables (and <img> samples with --require-images).
2. --screenshot at 1280x4000: the PNG must exist and be a PNG.
The source is also checked for external URLs: the report must be self-contained.
Exits 0 and prints the screenshot path on success; exits 1 with the reasons otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
# Chromium logs page console messages as "...:CONSOLE(line)] "text", source: ..." at INFO level;
# its own start-up noise (dbus, gcm, ...) never carries CONSOLE, so only those lines are judged.
CONSOLE_ERROR = re.compile(r"ERROR:CONSOLE|Uncaught|CONSOLE.*(error|Failed to load)", re.IGNORECASE)
# The only URL a self-contained report may hold: the SVG namespace, which is a name, not a fetch.
ALLOWED_URL = "http://www.w3.org/2000/svg"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_chromium(chromium: str, extra: list[str], url: str, timeout: float) -> subprocess.CompletedProcess:
    profile_dir = tempfile.mkdtemp(prefix="check-report-chromium-")
    try:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", *extra, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile_dir, ignore_errors=True)


def external_urls(source: str) -> list[str]:
    return sorted({u for u in re.findall(r"""(?:https?|ftp)://[^\s"'<>)]+""", source) if u != ALLOWED_URL})


def check_dom(dom: str, require_images: bool) -> tuple[list[str], dict[str, int]]:
    counts = {tag: len(re.findall(rf"<{tag}[\s>]", dom)) for tag in ("svg", "table", "img")}
    problems = []
    if not dom.strip():
        problems.append("Chromium returned an empty DOM")
    for tag in ("svg", "table") + (("img",) if require_images else ()):
        if counts[tag] == 0:
            problems.append(f"no <{tag}> in the rendered DOM")
    if re.search(r"<script[\s>]", dom):
        problems.append("the report contains a <script>; it should need no JavaScript")
    return problems, counts


def check(html_path: Path, screenshot: Path, chromium: str, window: str, require_images: bool,
          timeout: float) -> list[str]:
    """All problems found (an empty list means the report renders cleanly)."""
    if not html_path.is_file():
        return [f"{html_path} does not exist"]
    if not (Path(chromium).is_file() and os.access(chromium, os.X_OK)):
        return [f"Chromium not found at {chromium} (install it with `apt-get install -y chromium`)"]
    url = html_path.resolve().as_uri()
    problems = [f"external URL in the report (it must be self-contained): {u}"
                for u in external_urls(html_path.read_text(errors="replace"))]
    try:
        dumped = run_chromium(chromium, ["--enable-logging=stderr", "--v=0", "--dump-dom"], url, timeout)
    except subprocess.TimeoutExpired:
        return problems + [f"Chromium did not finish rendering {html_path} within {timeout:.0f} s"]
    if dumped.returncode != 0:
        problems.append(f"Chromium --dump-dom exited {dumped.returncode}: {dumped.stderr.strip()[-500:]}")
    problems += [f"console error: {line.strip()}" for line in dumped.stderr.splitlines() if CONSOLE_ERROR.search(line)]
    dom_problems, counts = check_dom(dumped.stdout, require_images)
    problems += dom_problems
    print(f"rendered DOM: {counts['svg']} <svg>, {counts['table']} <table>, {counts['img']} <img>")

    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    try:
        shot = run_chromium(chromium, [f"--screenshot={screenshot.resolve()}", f"--window-size={window}"], url,
                            timeout)
    except subprocess.TimeoutExpired:
        return problems + [f"Chromium did not finish the screenshot within {timeout:.0f} s"]
    if not screenshot.is_file() or screenshot.stat().st_size == 0:
        problems.append(f"no screenshot written to {screenshot} (Chromium exited {shot.returncode}: "
                        f"{shot.stderr.strip()[-500:]})")
    elif screenshot.read_bytes()[:8] != PNG_SIGNATURE:
        problems.append(f"{screenshot} is not a PNG")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the report.html to check")
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="where to write the PNG (default: report.png beside the HTML)")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", DEFAULT_CHROMIUM))
    parser.add_argument("--window-size", default="1280,4000")
    parser.add_argument("--require-images", action="store_true",
                        help="also fail when the report shows no <img> (sample grids)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per Chromium run")
    args = parser.parse_args(argv)
    screenshot = args.screenshot or args.html.with_name("report.png")
    problems = check(args.html, screenshot, args.chromium, args.window_size, args.require_images, args.timeout)
    if problems:
        print(f"check_report_browser: FAILED for {args.html}:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"screenshot: {screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
