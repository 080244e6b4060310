"""Check that the ONNX Runtime GenAI requirement sets resolve for the platforms they target.

pip evaluates environment markers for the machine it runs on, so `pip install -r
requirements/directml.txt` on Linux never looks at the Windows lines. This script evaluates the
markers for the target platform itself, then asks pip to resolve the selected lines with
`--dry-run --only-binary=:all: --platform ...` (wheels only, nothing installed).

Needs the package index (network); not part of the test suite. Usage:
    python tools/check_route_resolves.py            # directml.txt for Windows, cuda.txt for Linux and Windows
    python tools/check_route_resolves.py --no-deps  # only check that the pinned wheels exist
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = {
    "win_amd64": {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt", "platform_machine": "AMD64"},
    "manylinux_2_28_x86_64": {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                              "platform_machine": "x86_64"},
}
# (requirements file, platform): the route's own lines; base.txt (torch...) is shared by every route.
CHECKS = [("directml.txt", "win_amd64"), ("cuda.txt", "manylinux_2_28_x86_64"), ("cuda.txt", "win_amd64")]


def route_requirements(path: Path, platform: str, python: str) -> list[str]:
    """The requirement lines of `path` whose markers hold on `platform` (without -r includes)."""
    env = {**default_environment(), **PLATFORMS[platform], "python_version": python,
           "python_full_version": f"{python}.0"}
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            out.append(f"{req.name}{req.specifier}")
    return out


def resolve(requirements: list[str], platform: str, python: str, deps: bool) -> tuple[bool, str]:
    """Ask pip for a dry-run resolve; return (ok, 'name==version ...' or pip's error tail)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--only-binary=:all:",
               "--platform", platform, "--python-version", python, "--implementation", "cp",
               "--target", str(Path(tmp) / "target"), "--report", str(report), *requirements]
        if not deps:
            cmd.append("--no-deps")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return False, "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        installs = json.loads(report.read_text())["install"]
        return True, " ".join(sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.11", help="target Python version (default 3.11)")
    parser.add_argument("--no-deps", action="store_true", help="check only the listed wheels, not their dependencies")
    args = parser.parse_args()
    failed = 0
    for name, platform in CHECKS:
        reqs = route_requirements(ROOT / "requirements" / name, platform, args.python)
        ok, detail = resolve(reqs, platform, args.python, deps=not args.no_deps)
        failed += not ok
        print(f"{'OK  ' if ok else 'FAIL'} {name} on {platform}, Python {args.python}: {' '.join(reqs)}")
        print(f"     {'would install: ' if ok else ''}{detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
