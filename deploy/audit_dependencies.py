"""Known-vulnerability check of the installed dependencies (``make audit``, part of ``make test``).

Runs ``pip-audit``, which asks PyPI's JSON API for each installed version
(``/pypi/<name>/<version>/json``). Some registry mirrors only serve the project document
(``/pypi/<name>/json``); pip-audit then reports "could not be audited" for everything and
"No known vulnerabilities found", which proves nothing. For those packages this script
falls back to the project document, whose ``vulnerabilities`` list is exact for the latest
release: when the installed version is the latest, that list is its answer. Anything still
unaudited is listed and, with ``AUDIT_STRICT=1``, fails the run.

Exit status: 0 clean, 1 known vulnerabilities (or unaudited packages under AUDIT_STRICT=1),
2 pip-audit could not run at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

INDEX = os.environ.get("AUDIT_PYPI_JSON", "https://pypi.org/pypi")
BIN = Path(sys.executable).parent


def pip_audit() -> list[dict]:
    done = subprocess.run(
        [str(BIN / "pip-audit"), "--skip-editable", "--progress-spinner", "off", "-f", "json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        return list(json.loads(done.stdout)["dependencies"])
    except (json.JSONDecodeError, KeyError):
        print(f"pip-audit did not run:\n{done.stderr[-2000:]}", file=sys.stderr)
        raise SystemExit(2) from None


def latest_release_vulns(name: str, version: str) -> list[dict] | None:
    """Vulnerabilities of ``name`` ``version`` from the project document, if it is the latest."""
    try:
        with urllib.request.urlopen(f"{INDEX}/{name}/json", timeout=30) as resp:
            project = json.load(resp)
    except (urllib.error.URLError, OSError, json.JSONDecodeError):
        return None
    if project.get("info", {}).get("version") != version:
        return None
    return [v for v in project.get("vulnerabilities", []) if not v.get("withdrawn")]


def main() -> int:
    vulnerable: list[str] = []
    unaudited: list[str] = []
    audited = 0
    for dep in pip_audit():
        name, version, vulns = dep["name"], dep.get("version"), dep.get("vulns")
        reason = dep.get("skip_reason", "")
        if "editable" in reason:
            continue  # this project itself
        if vulns is None:  # skipped: "<reason>: name (version)"
            version = reason.rsplit("(", 1)[-1].rstrip(")") if "(" in reason else None
            vulns = latest_release_vulns(name, version) if version else None
        if vulns is None:
            unaudited.append(f"{name} {version or '?'}")
            continue
        audited += 1
        for v in vulns:
            fixed = ", ".join(v.get("fixed_in") or []) or "no fix yet"
            vulnerable.append(f"{name} {version}: {v.get('id')} (fixed in {fixed})")
    print(f"audited {audited} installed packages for known vulnerabilities")
    for line in vulnerable:
        print(f"VULNERABLE {line}")
    if unaudited:
        print(f"not audited ({len(unaudited)}; not the latest release, or PyPI unreachable):")
        print("  " + ", ".join(unaudited))
    if vulnerable:
        return 1
    if unaudited and os.environ.get("AUDIT_STRICT") == "1":
        return 1
    print("no known vulnerabilities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
