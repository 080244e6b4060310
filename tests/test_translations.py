"""The notebooks in six languages: one source each, the English code exactly, prose translated, never behind.

The notebooks themselves run under nbval in every language (conftest.py); these tests check what a run cannot:
that a translation is the English notebook with only its words changed, and that it follows the English source.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import nbformat
import pytest

from phi3kit import pocket
from phi3kit.errors import UnknownChoiceError
from phi3kit.runner import localized, notebook_parameters, output_name

ROOT = Path(__file__).resolve().parents[1]


def _load_build() -> Any:
    """tools/notebooks/build.py under a name of its own (`build` is also PyPA's package). Never put its folder on
    sys.path: `import openvino` anywhere in the test run would then find the notebook source openvino.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("phi3kit_notebooks_build", ROOT / "tools" / "notebooks" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()
authoring = sys.modules["nb"]  # the authoring kit, loaded by build.py

TRANSLATED = [lang for lang in authoring.LANGUAGES if lang != "en"]
# Words English prose cannot do without and none of the five languages uses (Romanian "are", French "on" and
# "as" are left out): a translated cell where several remain has English sentences left in it.
ENGLISH = frozenset("the and with this that which you your from into when what it its for of to by be is was "
                    "not or can will has have if than then only there their these those does how".split())


def read(name: str, lang: str) -> Any:
    return nbformat.read(str(authoring.notebook_path(name, lang)), as_version=4)


def english_words(markdown: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z]+", authoring.prose(markdown)) if w.lower() in ENGLISH]


def code_spans(markdown: str) -> Counter[str]:
    blocks = re.findall(r"```.*?```", markdown, flags=re.S)
    inline = re.findall(r"`[^`\n]+`", re.sub(r"```.*?```", " ", markdown, flags=re.S))
    return Counter(blocks + inline)


@pytest.mark.parametrize("lang", list(authoring.LANGUAGES))
@pytest.mark.parametrize("name", build.NAMES)
def test_the_committed_notebook_is_its_source_built(name: str, lang: str) -> None:
    """Catches: a notebook edited by hand, or a source (or translation) changed without `tools/notebooks/build.py`."""
    path, fresh = build.built(name, lang)
    assert build.differences(path, fresh) == [], f"run: python tools/notebooks/build.py {name} --lang {lang}"


@pytest.mark.parametrize("lang", TRANSLATED)
@pytest.mark.parametrize("name", build.NAMES)
def test_a_translation_has_the_english_code_cells_and_tags(name: str, lang: str) -> None:
    en, tr = read(name, "en"), read(name, lang)
    assert tr.metadata["phi3kit"]["lang"] == lang and tr.metadata["phi3kit"]["source"] == f"tools/notebooks/{name}.py"
    assert [(c.id, c.cell_type, c.metadata.get("tags")) for c in tr.cells] == \
        [(c.id, c.cell_type, c.metadata.get("tags")) for c in en.cells]
    for a, b in zip(en.cells, tr.cells, strict=True):
        if a.cell_type == "code":
            is_parameters = "parameters" in a.metadata.get("tags", [])
            assert authoring.code_problem(a.source, b.source, is_parameters) is None, b.id


@pytest.mark.parametrize("lang", TRANSLATED)
@pytest.mark.parametrize("name", build.NAMES)
def test_every_code_cell_compiles(name: str, lang: str) -> None:
    """Catches a translated comment that breaks the code around it (a lost '#', an unclosed quote): translations
    that are the English program are not run by nbval (conftest.py), so this is where they are compiled."""
    from IPython.core.inputtransformer2 import TransformerManager

    transform = TransformerManager().transform_cell
    for cell in read(name, lang).cells:
        if cell.cell_type == "code":
            compile(transform(cell.source), f"{lang}/{name}.ipynb, cell {cell.id}", "exec")


def asks_nothing_of_its_own(name: str, lang: str) -> bool:
    """Its parameter values are the English ones (compare: routes and sizes, no question to translate)."""
    def defaults(language: str) -> dict[str, str]:
        return {k: v["default"] for k, v in notebook_parameters(authoring.notebook_path(name, language)).items()}

    return defaults(lang) == defaults("en")


TWINS = [(name, lang) for name in build.NAMES for lang in TRANSLATED if asks_nothing_of_its_own(name, lang)]


def test_the_twins_are_what_conftest_leaves_to_the_english_run() -> None:
    assert {name for name, _ in TWINS} == {"compare"}  # the others ask questions in their language: nbval runs them


@pytest.mark.parametrize(("name", "lang"), TWINS)
def test_a_translation_asking_nothing_of_its_own_stores_the_english_outputs(name: str, lang: str) -> None:
    """Such a translation is the English program; nbval runs the English notebook only, and the outputs a
    learner sees must be its."""
    en, tr = read(name, "en"), read(name, lang)
    assert [c.get("outputs") for c in tr.cells] == [c.get("outputs") for c in en.cells]


@pytest.mark.parametrize("lang", TRANSLATED)
@pytest.mark.parametrize("name", ["openvino", "directml", "npu", "compare"])
def test_parameters_keep_names_types_and_values_but_ask_in_the_notebooks_language(name: str, lang: str) -> None:
    """The same knobs everywhere (a grid file works on every language); only the questions are translated, and they
    are questions the pocket model learnt in that language, so a test run gets an answer in it."""
    en = notebook_parameters(authoring.notebook_path(name, "en"))
    tr = notebook_parameters(authoring.notebook_path(name, lang))
    assert {k: v["inferred_type_name"] for k, v in tr.items()} == {k: v["inferred_type_name"] for k, v in en.items()}
    learnt = {x["question"]: x.get("lang", "en") for x in pocket.load_qa()}
    for key, p in tr.items():
        value = p["default"].strip("\"'")
        if key in authoring.TRANSLATABLE and value:
            assert learnt.get(value) == lang, f"{key}={value!r} is not one of the pocket's {lang} questions"
            assert learnt.get(en[key]["default"].strip("\"'")) == "en"
        else:
            assert p["default"] == en[key]["default"], key
        assert p["help"] and p["help"] != en[key]["help"], f"{key}: its comment is not translated"


@pytest.mark.parametrize("lang", TRANSLATED)
@pytest.mark.parametrize("name", build.NAMES)
def test_prose_is_translated_and_commands_are_kept(name: str, lang: str) -> None:
    en, tr = read(name, "en"), read(name, lang)
    for a, b in zip(en.cells, tr.cells, strict=True):
        if a.cell_type != "markdown":
            continue
        left = english_words(b.source)
        assert len(left) < 3, f"{lang}/{name}, cell {b.id}: English left in the prose: {left}"
        # What a learner copies stays byte for byte the English; notebook paths point at this language's notebooks.
        expected = Counter({re.sub(r"notebooks/(\w+)\.ipynb", rf"notebooks/{lang}/\1.ipynb", span): n
                            for span, n in code_spans(a.source).items()})
        assert code_spans(b.source) == expected, f"{lang}/{name}, cell {b.id}"


@pytest.mark.parametrize("name", build.NAMES)
def test_the_english_detector_sees_english(name: str) -> None:
    """The detector above is worth something only if the English cells trip it."""
    cells = [c for c in read(name, "en").cells if c.cell_type == "markdown" and len(c.source) > 200]
    assert cells and all(len(english_words(c.source)) >= 3 for c in cells)


def test_persian_prose_reads_right_to_left_and_code_left_to_right() -> None:
    for name in build.NAMES:
        nb = read(name, "fa")
        assert nb.metadata["phi3kit"]["direction"] == "rtl"
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                assert cell.source.startswith('<div dir="rtl" lang="fa">\n\n') and cell.source.endswith("\n\n</div>")
            else:
                assert '<div dir="rtl"' not in cell.source
    assert all(read(name, lang).metadata["phi3kit"]["direction"] == "ltr"
               for name in build.NAMES for lang in ("en", "fr", "zh"))


def test_an_english_cell_edited_later_fails_until_its_translations_follow() -> None:
    source = authoring.source("openvino").CELLS
    edited = [replace(c, source=c.source + "\n\nOne more sentence.") if c.id == "intro" else c for c in source]
    assert authoring.stale(source, authoring.load_translation("fr", "openvino")) == []
    problems = authoring.stale(edited, authoring.load_translation("fr", "openvino"))
    assert len(problems) == 1 and problems[0].startswith("intro: translated from an older English text")
    with pytest.raises(ValueError, match="fr/openvino: intro: translated from an older English text"):
        authoring.localize(edited, "fr", "openvino")
    # A code cell's comments are translated, so a code cell with comments goes stale like prose.
    code = next(c for c in source if c.kind == "code" and authoring.has_comments(c.source))
    edited = [replace(c, source=c.source + "  # and a new comment") if c.id == code.id else c for c in source]
    assert any(p.startswith(f"{code.id}: translated from an older") for p in
               authoring.stale(edited, authoring.load_translation("zh", "openvino")))


def test_a_translation_that_changes_code_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    table = authoring.load_translation("ro", "openvino")
    cell = next(c for c in authoring.source("openvino").CELLS if c.kind == "code" and "kit." in c.source
                and c.id in table["cells"])
    table["cells"][cell.id]["text"] = table["cells"][cell.id]["text"].replace("kit.", "kat.", 1)
    monkeypatch.setattr(authoring, "load_translation", lambda lang, name: table)
    with pytest.raises(ValueError, match=f"ro/openvino, cell {cell.id}: the code differs from the English"):
        authoring.localize(authoring.source("openvino").CELLS, "ro", "openvino")


def test_code_comparison_ignores_comments_and_translated_questions_only() -> None:
    english = 'prompt: str = "Can you introduce yourself?"  # what you ask\ndevice: str = "CPU"  # where it runs'
    ok = 'prompt: str = "Peux-tu te présenter ?"  # ce que vous demandez\ndevice: str = "CPU"  # où il tourne'
    assert authoring.code_problem(english, ok, is_parameters=True) is None
    assert authoring.code_problem(english, ok.replace('"CPU"', '"NPU"'), is_parameters=True)
    assert authoring.code_problem(english, ok, is_parameters=False)  # outside the parameters cell no string changes
    assert authoring.code_problem("x = 1  # one", "x = 1  # un") is None
    assert authoring.code_problem("x = 1  # one", "x = 2  # un")
    assert authoring.code_problem("f(a)  # NBVAL_CHECK_OUTPUT", "f(a)  # une sortie vérifiée")  # the marker stays
    assert authoring.code_problem("s = 'a # b'", "s = 'a # c'")  # a '#' inside a string is code, not a comment
    assert "more than one '='" in authoring.code_problem(english, ok.replace("# où", "# où = là"), is_parameters=True)


def test_loading_the_sources_leaves_the_openvino_library_importable() -> None:
    """Catches: tools/notebooks on sys.path, where `import openvino` (in any later test) is the notebook source."""
    authoring.source("openvino")
    import openvino

    assert hasattr(openvino, "Core") and str(ROOT / "tools") not in " ".join(sys.path)


def test_run_finds_a_notebooks_translation_by_language(tmp_path: Path) -> None:
    english = ROOT / "notebooks" / "openvino.ipynb"
    assert localized(english, "fa") == ROOT / "notebooks" / "fa" / "openvino.ipynb"
    assert localized(ROOT / "notebooks" / "zh" / "openvino.ipynb", "en") == english
    assert localized(ROOT / "notebooks" / "zh" / "openvino.ipynb", "ro") == ROOT / "notebooks" / "ro" / "openvino.ipynb"
    with pytest.raises(UnknownChoiceError, match=r"language for openvino.ipynb: 'de'.*en, fa, fr, id, ro, zh"):
        localized(english, "de")
    assert output_name(ROOT / "notebooks" / "fa" / "openvino.ipynb") == "openvino-fa.ipynb"
    assert output_name(english) == "openvino.ipynb"


# --- the translations nbval does not run in a kernel (conftest.RUN_TRANSLATIONS): their checked cells, here ---------
CHECKED = "# NBVAL_CHECK_OUTPUT"


def root_conftest(config: pytest.Config) -> Any:
    """The repository's conftest.py (the notebook collector): its test values and RUN_TRANSLATIONS."""
    return config.pluginmanager.get_plugin(str(ROOT / "conftest.py"))


def replayed(config: pytest.Config) -> list[tuple[str, str]]:
    """Every translation nbval leaves out, but the twins (their stored outputs are the English ones, above)."""
    runs = root_conftest(config).RUN_TRANSLATIONS
    return [(name, lang) for name in build.NAMES for lang in TRANSLATED
            if f"{lang}/{name}.ipynb" not in runs and (name, lang) not in TWINS]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "replayed_translation" in metafunc.fixturenames:
        pairs = replayed(metafunc.config)
        metafunc.parametrize("replayed_translation", pairs, ids=[f"{lang}-{name}" for name, lang in pairs])


def run_cell(source: str, namespace: dict[str, Any]) -> str:
    """A code cell run in `namespace` as a kernel runs it (IPython's transforms); what it printed."""
    import contextlib
    import io

    from IPython.core.inputtransformer2 import TransformerManager

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(TransformerManager().transform_cell(source), "<cell>", "exec"), namespace)  # noqa: S102
    return printed.getvalue()


def with_test_values(cell: Any, config: pytest.Config, name: str) -> str:
    conf = root_conftest(config)
    return cell.source + conf.parameter_source(conf.NOTEBOOK_TEST_PARAMETERS[f"{name}.ipynb"])


def assert_checked_cells_print_their_outputs(cells: list[Any], namespace: dict[str, Any], label: str) -> None:
    """Run each checked code cell of `cells` in `namespace`: what it prints is its stored stdout, as nbval compares."""
    checked = [c for c in cells if CHECKED in c.source]
    assert checked, label
    for cell in checked:
        assert all(o.output_type == "stream" and o.name == "stdout" for o in cell.outputs), cell.id
        stored = "".join(o.text for o in cell.outputs)
        assert stored and run_cell(cell.source, namespace) == stored, f"{label}, cell {cell.id}"


@pytest.fixture(scope="module")
def english_program(pytestconfig: pytest.Config) -> Any:
    """Per notebook: the English notebook's state after its cells before the first checked one (the export and the
    loaded session), run here once with nbval's test values; translations share it, their code being this code."""
    made: dict[str, dict[str, Any]] = {}

    def get(name: str) -> dict[str, Any]:
        if name not in made:
            namespace: dict[str, Any] = {"__name__": "__main__"}
            cells = [c for c in read(name, "en").cells if c.cell_type == "code"]
            first = next(i for i, c in enumerate(cells) if CHECKED in c.source)
            for cell in cells[:first]:
                tags = cell.metadata.get("tags", [])
                run_cell(with_test_values(cell, pytestconfig, name) if "parameters" in tags else cell.source,
                         namespace)
            made[name] = namespace
        return made[name]

    yield get
    for namespace in made.values():
        namespace["session"].close()


def test_every_translation_is_run_replayed_or_a_twin(pytestconfig: pytest.Config) -> None:
    """Every translation is covered once: run by nbval, replayed below, or a twin of its English notebook. Chinese
    runs in a kernel headless (zh/openvino.ipynb: tests/conftest.py's openvino_headless, read by test_codepage,
    test_notebooks and test_security), Persian under nbval: the scripts a Latin-script run cannot stand in for."""
    runs = root_conftest(pytestconfig).RUN_TRANSLATIONS
    assert runs == {"fa/directml.ipynb"}
    fixtures = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8")
    assert '"run", str(root / "notebooks" / "openvino.ipynb"),\n                          "--lang", "zh"' in fixtures
    covered = {f"{lang}/{name}.ipynb" for name, lang in [*replayed(pytestconfig), *TWINS]} | set(runs)
    assert covered == {f"{lang}/{name}.ipynb" for name in build.NAMES for lang in TRANSLATED}


@pytest.mark.slow
def test_a_translation_nbval_does_not_run_prints_its_stored_outputs(replayed_translation: tuple[str, str],
                                                                    english_program: Any,
                                                                    pytestconfig: pytest.Config) -> None:
    """Its checked cells, run on its own parameter values (translated questions) with the English notebook's session:
    what running it in a kernel under nbval caught. Catches: a translated question the pocket model does not answer
    in that language, stored outputs left stale, a checked cell failing on translated values. Its other cells are the
    English code (test_a_translation_has_the_english_code_cells_and_tags), run by the English notebook, and on Chinese
    and Persian text by conftest.RUN_TRANSLATIONS."""
    name, lang = replayed_translation
    namespace = dict(english_program(name))
    cells = [c for c in read(name, lang).cells if c.cell_type == "code"]
    run_cell(with_test_values(next(c for c in cells if "parameters" in c.metadata.get("tags", [])), pytestconfig,
                              name), namespace)
    assert namespace["prompt"] != english_program(name)["prompt"]  # its own question, not the English one
    assert_checked_cells_print_their_outputs(cells, namespace, f"{lang}/{name}")


@pytest.mark.slow
def test_an_english_notebook_run_elsewhere_prints_its_stored_outputs(english_program: Any,
                                                                     pytestconfig: pytest.Config) -> None:
    """The English notebooks nbval leaves out because their program runs in a kernel in another language
    (conftest.RUN_ELSEWHERE: openvino.ipynb, run headless in Chinese): their checked cells, run on nbval's test
    values with the English notebook's session, as nbval compared them. Catches: English stored outputs left stale,
    a checked cell failing on the English values. Every cell runs in the Chinese run, the English code exactly
    (test_a_translation_has_the_english_code_cells_and_tags)."""
    names = [Path(n).stem for n in root_conftest(pytestconfig).RUN_ELSEWHERE]
    if not names:
        pytest.skip("nbval runs every English notebook in this environment (the lean one runs no headless notebook)")
    for name in names:
        cells = [c for c in read(name, "en").cells if c.cell_type == "code"]
        assert_checked_cells_print_their_outputs(cells, dict(english_program(name)), f"en/{name}")


def placeholders(source: str) -> Counter[str]:
    """The formatting placeholders ({name}, {x:.2f}, %s) in a code cell's string literals."""
    import io
    import tokenize

    from IPython.core.inputtransformer2 import TransformerManager

    strings = [t.string for t in tokenize.generate_tokens(io.StringIO(TransformerManager().transform_cell(source))
                                                          .readline) if t.type == tokenize.STRING]
    return Counter(p for s in strings for p in re.findall(r"\{[^{}\s]*\}|%[sdifr]", s))


@pytest.mark.parametrize("lang", TRANSLATED)
@pytest.mark.parametrize("name", build.NAMES)
def test_translated_code_keeps_every_formatting_placeholder(name: str, lang: str) -> None:
    """Catches a translated question or string whose placeholder was translated or dropped (a KeyError or a raw
    '{x}' when the cell runs), for the translations no kernel runs."""
    en, tr = read(name, "en"), read(name, lang)
    for a, b in zip(en.cells, tr.cells, strict=True):
        if a.cell_type == "code":
            assert placeholders(b.source) == placeholders(a.source), f"{lang}/{name}, cell {b.id}"
    assert sum((placeholders(c.source) for c in en.cells if c.cell_type == "code"), Counter())  # it sees some
