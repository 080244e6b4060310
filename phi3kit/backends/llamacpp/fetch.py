"""Where llama.cpp's converter comes from: PHI3KIT_LLAMA_CPP's llama.cpp sources, else the installed
llama-cpp-python's source archive, fetched once with pip into the kit's cache."""

from __future__ import annotations

import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from ... import env
from ...cache import ExportCache
from ...errors import ExportError
from ...procs import run_logged
from ..base import Log
from .install import PACKAGE, installed_version, missing

SOURCES_ENV = env.LLAMA_CPP  # a llama.cpp checkout, or an extracted llama-cpp-python sdist


def llama_cpp_tree(folder: Path) -> Path | None:
    """The llama.cpp folder holding convert_hf_to_gguf.py and gguf-py: `folder` itself (a llama.cpp checkout) or
    its vendor/llama.cpp (an extracted llama-cpp-python source archive); None if neither."""
    for tree in (folder, folder / "vendor" / "llama.cpp"):
        if (tree / "convert_hf_to_gguf.py").is_file() and (tree / "gguf-py" / "gguf").is_dir():
            return tree
    return None


def sdist_command(version: str, dest: Path) -> list[str]:
    """pip's download of llama-cpp-python's source archive (nothing is built)."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"{PACKAGE}=={version}",
            "-d", str(dest)]


# The parts of the source archive the conversion needs (under vendor/llama.cpp/).
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")


def extract_converter(archive: Path, out: Path) -> None:
    """Copy vendor/llama.cpp's converter, its model classes and gguf-py out of a llama-cpp-python sdist into `out`."""
    with tarfile.open(archive) as tar:
        found = False
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or parts[3] not in CONVERTER_PARTS:
                continue
            if not member.isfile() or any(p in ("..", "") for p in parts) or Path(member.name).is_absolute():
                continue
            target = out.joinpath(*parts[3:])
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(target, "wb") as f:
                shutil.copyfileobj(source, f)
            found |= parts[3] == "convert_hf_to_gguf.py"
    if not found:
        raise ExportError(f"{archive.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py: not a llama-cpp-python "
                          f"source archive? Fix: set {SOURCES_ENV} to a llama.cpp checkout.")


def converter_tree(cache: ExportCache, log: Log = print) -> Path:
    """llama.cpp's converter sources: PHI3KIT_LLAMA_CPP's, else the installed version's sdist, fetched once."""
    fix = (f"Fix: set {SOURCES_ENV} to a llama.cpp checkout (git clone https://github.com/ggml-org/llama.cpp, "
           "ideally at the commit your llama-cpp-python vendors) or to an extracted llama-cpp-python source archive")
    if given := env.text(SOURCES_ENV):
        tree = llama_cpp_tree(Path(given).expanduser())
        if tree is None:
            raise ExportError(f"{SOURCES_ENV}={given} holds no convert_hf_to_gguf.py with gguf-py beside it (looked in "
                              f"it and in its vendor/llama.cpp). {fix}.")
        return tree
    version = installed_version()
    if version is None:
        raise missing()
    key = {"backend": "llamacpp", "kind": "converter", "model": f"llama.cpp converter ({PACKAGE} {version} sdist)",
           PACKAGE: version}

    def fetch(out: Path) -> None:
        log(f"llama.cpp's converter is not installed with {PACKAGE}; fetching its {version} source archive once "
            f"(about 80 MB) into the kit's cache. ({SOURCES_ENV} names a llama.cpp checkout to use instead.)")
        with tempfile.TemporaryDirectory(prefix="phi3kit-llama-sdist-") as tmp:
            rc, lines = run_logged(sdist_command(version, Path(tmp)), log,
                                   show=lambda line: bool(line) and "━" not in line)
            archives = sorted(Path(tmp).glob("*.tar.gz"))
            if rc != 0 or not archives:
                raise ExportError(f"pip could not download the {PACKAGE} {version} source archive (exit {rc}):\n"
                                  + "\n".join(lines[-10:]) + f"\n{fix}.")
            extract_converter(archives[0], out / "llama.cpp")

    entry = cache.get_or_build("llamacpp", f"llama.cpp-converter-{version}", key, fetch, log)
    return entry.path / "llama.cpp"

