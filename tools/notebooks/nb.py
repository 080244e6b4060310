"""The notebooks' authoring kit: cells with stable ids, their translations, and the checks that keep them honest.

Each notebook has one English source (tools/notebooks/<name>.py: a TITLE and a list of CELLS) and one
translation file per language (tools/notebooks/i18n/<lang>/<name>.yaml). A translation replaces the
prose of markdown cells and the comments of code cells, never the code: `code_problem()` compares a
translated code cell with the English one with comments removed (the parameters cell may also change
its string values: a prompt in the notebook's language). Each translated cell records the hash of the
English text it was made from, so an English cell edited later fails the build until its translations
follow (`stale()`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import sys
import tokenize
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
I18N = HERE / "i18n"
NOTEBOOKS = ROOT / "notebooks"
# The seed tutorial's six languages; English stays at notebooks/<name>.ipynb, the others in notebooks/<lang>/.
LANGUAGES = {"en": "English", "fr": "Français", "zh": "简体中文", "fa": "فارسی", "id": "Bahasa Indonesia",
             "ro": "Română"}
RTL = {"fa"}
KINDS = ("md", "code", "parameters")
CHECK = "# NBVAL_CHECK_OUTPUT"
# Parameters whose string values a translation may change: what the learner asks, in their language.
TRANSLATABLE = frozenset({"prompt", "chat_prompt", "follow_up", "system"})


@dataclass(frozen=True)
class Cell:
    kind: str
    id: str
    source: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"cell {self.id}: kind {self.kind!r} is not one of {KINDS}")


def md(cell_id: str, source: str) -> Cell:
    return Cell("md", cell_id, source.strip("\n"))


def code(cell_id: str, source: str) -> Cell:
    return Cell("code", cell_id, source.strip("\n"))


def parameters(cell_id: str, source: str) -> Cell:
    return Cell("parameters", cell_id, source.strip("\n"))


# Cells the route notebooks share word for word (each notebook's translation file still holds their words).
def answer_cell() -> Cell:
    """The streamed answer, its output checked by nbval: the same code in every route notebook."""
    return code("answer", """
# NBVAL_CHECK_OUTPUT
response = session.generate(prompt, system=system or None, max_new_tokens=max_new_tokens, do_sample=do_sample)
for chunk in response:
    print(chunk, end="", flush=True)
print()
""")


def speed_md(memory_note: str = "") -> Cell:
    """What the metrics table's figures mean; `memory_note` qualifies Peak RSS for the route."""
    return md("metrics-md", f"""
## 5. How fast was it?

* **TTFT** (time to first token): reading the prompt and producing the first token.
* **TPOT** (time per output token) and **tokens/s**: the decode speed after that.
* **Peak RSS**: the most memory this Python process used while generating{memory_note}.
""")


def plot_cells() -> list[Cell]:
    """The per-token latency plot and what it shows."""
    return [md("plot-md", """
Each bar is one token's latency. The first (orange) is the time to first token; the rest are decode
steps, which stay flat: each reads all the weights once.
"""), code("plot", """
response.metrics.plot();
""")]


def canary_cells(routes: str) -> list[Cell]:
    """The pocket canary for the notebook's route and device (`routes`: the code naming its backend and runtime)."""
    return [md("canary-md", """
**Can this route be trusted here?** Before trusting an answer, ask the pocket model, on this route and
`device`, questions whose answers are known: `kit.check_machine` does it offline in seconds, reads the
device that really ran and judges its driver. PASS: right answers, on the device asked for. FAIL says
what went wrong (a wrong answer, a silent fallback to the CPU, an old driver) and the fix.
`phi3kit check` does the same for every route of this machine.
"""), code("canary", f"""
canary = kit.check_machine({routes}, devices=[device])
print(canary.table())
""")]


def source(name: str) -> ModuleType:
    """tools/notebooks/<name>.py, loaded by its path: `import openvino` would find the OpenVINO library instead."""
    key = f"phi3kit_notebook_source_{name}"
    if key not in sys.modules:
        path = HERE / f"{name}.py"
        if not path.is_file():
            raise FileNotFoundError(f"no notebook source {path}")
        spec = importlib.util.spec_from_file_location(key, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def cell_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]


def load_translation(lang: str, name: str) -> dict[str, Any]:
    import yaml

    path = I18N / lang / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {lang} translation of {name}: {path}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def stale(cells: list[Cell], table: dict[str, Any]) -> list[str]:
    """Cells whose translation is missing, or was made from another English text than today's."""
    out = []
    entries = table.get("cells", {})
    for cell in cells:
        entry = entries.get(cell.id)
        needs = cell.kind == "md" or has_comments(cell.source)
        if entry is None or entry.get("todo"):
            if needs:
                out.append(f"{cell.id}: not translated")
            continue
        if entry.get("en") != cell_hash(cell.source):
            out.append(f"{cell.id}: translated from an older English text (hash {entry.get('en')}, "
                       f"English is now {cell_hash(cell.source)})")
    extra = sorted(set(entries) - {c.id for c in cells})
    out += [f"{cell_id}: translated, but no such English cell" for cell_id in extra]
    return out


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    return [t for t in tokenize.generate_tokens(io.StringIO(source + "\n").readline)
            if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)]


def has_comments(source: str) -> bool:
    return any(t.type == tokenize.COMMENT and t.string.strip() != CHECK for t in _tokens(source))


def code_problem(english: str, translated: str, is_parameters: bool = False) -> str | None:
    """Why a translated code cell is not the English code (comments aside; in the parameters cell, the
    values of TRANSLATABLE aside too), or None."""
    def shape(source: str) -> list[tuple[int, str]]:
        out = []
        name, line = "", -1
        for t in _tokens(source):
            if t.start[0] != line:
                line, name = t.start[0], t.string if t.type == tokenize.NAME else ""
            if t.type == tokenize.COMMENT:
                if t.string.strip() == CHECK:
                    out.append((t.type, t.string.strip()))
                continue
            if is_parameters and t.type == tokenize.STRING and name in TRANSLATABLE:
                out.append((t.type, "<string>"))
                continue
            out.append((t.type, t.string))
        return out

    if is_parameters:
        for line in translated.splitlines():
            if line.count("=") > 1:  # papermill skips such a line: the parameter would vanish from `-p`
                return f"papermill cannot read a parameter line with more than one '=': {line.strip()!r}"
    a, b = shape(english), shape(translated)
    if a == b:
        return None
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    near = " ".join(s for _, s in a[max(at - 3, 0): at + 3])
    return f"the code differs from the English near: {near!r}"


def prose(text: str) -> str:
    """The words of a markdown cell: code spans, code blocks, links' targets and HTML removed."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"https?://\S+", " ", text)
    return text


def localize(cells: list[Cell], lang: str, name: str) -> tuple[list[Cell], str]:
    """The cells and title of `name` in `lang`; raises on a stale or code-changing translation."""
    title = source(name).TITLE
    if lang == "en":
        return cells, title
    table = load_translation(lang, name)
    if problems := stale(cells, table):
        raise ValueError(f"{lang}/{name}: " + "; ".join(problems))
    entries = table.get("cells", {})
    out = []
    for cell in cells:
        entry = entries.get(cell.id)
        if entry is None:
            out.append(cell)
            continue
        text = str(entry["text"]).strip("\n")
        if cell.kind != "md" and (why := code_problem(cell.source, text, cell.kind == "parameters")):
            raise ValueError(f"{lang}/{name}, cell {cell.id}: {why}")
        if cell.kind == "md" and lang in RTL:
            text = f'<div dir="rtl" lang="{lang}">\n\n{text}\n\n</div>'
        out.append(replace(cell, source=text))
    return out, str(table.get("title", title))


def notebook_path(name: str, lang: str) -> Path:
    return NOTEBOOKS / f"{name}.ipynb" if lang == "en" else NOTEBOOKS / lang / f"{name}.ipynb"


def render(cells: list[Cell], title: str, lang: str, name: str, keep: Any = None) -> Any:
    """The notebook object; `keep` (an existing notebook) lends its stored outputs to cells whose code is unchanged."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "title": title,
        "phi3kit": {"lang": lang, "source": f"tools/notebooks/{name}.py", "direction": "rtl" if lang in RTL
                    else "ltr"},
    }
    old = {c.get("id"): c for c in (keep.cells if keep is not None else [])}
    for cell in cells:
        if cell.kind == "md":
            nbc = nbformat.v4.new_markdown_cell(cell.source)
        else:
            nbc = nbformat.v4.new_code_cell(cell.source)
            if cell.kind == "parameters":
                nbc.metadata["tags"] = ["parameters"]
            prev = old.get(cell.id)
            if prev is not None and prev.get("source") == cell.source and CHECK in cell.source:
                nbc.outputs, nbc.execution_count = prev.get("outputs", []), prev.get("execution_count")
        nbc.id = cell.id
        nb.cells.append(nbc)
    return nb
