"""Write requirements.lock from a pip install report: every package pip resolved, its version and sha256.

    pip install --report report.json -e '.[dev]' pip     # in a fresh venv (`make lock` does it all)
    python .ci/lock.py report.json > requirements.lock

`make setup` installs the lock with `--require-hashes --no-deps`, so a fresh clone gets exactly the files
the suite passed with (the hashes are those of this machine's platform and Python: linux x86_64, 3.11).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = """\
# The exact dependency set `make test` passed with. Written by `make lock` (re-resolves every dependency
# afresh in a scratch venv, runs the suite there, and only if it passes writes this file); installed by
# `make setup` with pip --require-hashes --no-deps. Do not edit by hand: change pyproject.toml, run `make lock`.
# Resolved with Python {python} on {platform}; torch and torchvision are the wheels on this machine kind's disk.
"""


def lock_lines(report: dict) -> list[str]:
    lines = []
    for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        info = item["download_info"]
        if info.get("dir_info", {}).get("editable"):
            continue  # the project itself: installed from the checkout
        hashes = info.get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise SystemExit(f"{name} {version}: pip reported no sha256 for {info.get('url')}")
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{hashes['sha256']}")
    return lines


def main() -> None:
    report = json.loads(Path(sys.argv[1]).read_text())
    env = report.get("environment", {})
    sys.stdout.write(
        HEADER.format(python=env.get("python_full_version", "?"), platform=env.get("platform_machine", "?"))
    )
    sys.stdout.write("\n".join(lock_lines(report)) + "\n")


if __name__ == "__main__":
    main()
