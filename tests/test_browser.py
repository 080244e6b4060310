"""The chat panel in a real JupyterLab, driven by headless Chromium: type, send, watch the answer stream in.

Everything runs on 127.0.0.1 and is started and stopped here: a JupyterLab server with a token,
a notebook written by the test, and Chromium from Debian (`.ci/setup-browser` installs it; no
browser is downloaded). Skipped with the reason when Chromium or chromedriver is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import phi3kit as kit
from phi3kit import pocket

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
QUESTION = "What is an NPU?"
HANG_GUARD_S = 600  # waits end when their state arrives; the bound only keeps a broken run from hanging

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32",
                       reason="the JupyterLab fixture runs a POSIX session (start_new_session, os.killpg)"),
    pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
                       reason="needs Debian's chromium and chromium-driver: run .ci/setup-browser "
                              "(apt-get install -y chromium chromium-driver)"),
]

# fp32: the exact trained answer is earned there (at int8 one quantizer release could flip a token; int8 and int4
# answers are checked by agreement in test_openvino, not here: this test is about the panel in a browser).
POCKET_CELL = """import phi3kit as kit
session = kit.load("pocket", "openvino", "fp32", log=lambda m: None)
kit.chat(session, system="Answer from what you were taught.")"""
# A random model with ignore_eos: an answer that cannot end on its own before LONG tokens, so only the Stop click
# can end it early (its greedy answer would otherwise stop by itself after ~135 tokens, racing the click).
LONG = 4000
NOISY_CELL = """from phi3kit.testing import make_random_phi3
noisy = kit.load(str(make_random_phi3("mini-4k", {folder!r})), "transformers", "fp32", log=lambda m: None)
kit.chat(noisy, max_new_tokens={long}, ignore_eos=True)"""

pytest.importorskip("selenium", reason="pip install -r requirements/dev.txt (selenium drives the browser)")
pytest.importorskip("jupyterlab", reason="pip install -r requirements/dev.txt (jupyterlab serves the notebook)")

# No kernel-choice dialog, no news prompt: nothing between the test and the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
}

KERNEL_READY = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
return !!(k && k.connectionStatus === 'connected' && k.status === 'idle' && document.querySelector('.jp-Cell'));
"""

# Records every state the streaming answer goes through, as the browser renders it.
OBSERVE = """
const box = document.querySelectorAll('.phi3kit-chat-transcript')[0];
window.__seen = [];
new MutationObserver(() => {
  const answers = box.querySelectorAll('.phi3kit-assistant span');
  const last = answers[answers.length - 1];
  if (last) window.__seen.push(last.textContent);
}).observe(box, {subtree: true, childList: true, characterData: true});
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_notebook(path: Path, noisy_model: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells += [nbformat.v4.new_code_cell(POCKET_CELL),
                 nbformat.v4.new_code_cell(NOISY_CELL.format(folder=str(noisy_model), long=LONG))]
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A JupyterLab server on a free loopback port, with its own config, data and runtime folders: one for the
    module's tests (each opens its own notebook in it)."""
    tmp_path = tmp_path_factory.mktemp("lab")
    kit.export("pocket", "openvino", "fp32", log=lambda m: None)  # the kernel then only loads (shared cache)
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "chat.ipynb", tmp_path / "noisy-model")
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "PHI3KIT_HEADLESS"}  # a person clicks here
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
                "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR"):
        env[var] = str(tmp_path / var.lower())
    for plugin, values in LAB_SETTINGS.items():
        f = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = (tmp_path / "jupyter.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'jupyter.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield {"url": url, "token": token, "log": tmp_path / "jupyter.log", "root": root}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never fetch a driver or browser
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log")))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    if artifacts := os.environ.get("PHI3KIT_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / name)
    return shot


def last_answer(driver: Any, panel: int) -> str:
    return driver.execute_script(
        "const panel = document.querySelectorAll('.phi3kit-chat')[arguments[0]];"
        "const a = panel.querySelectorAll('.phi3kit-assistant span');"
        "return a.length ? a[a.length - 1].textContent : null", panel)


def test_chat_panel_streams_the_pocket_answer_and_stops(lab: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    answer = next(q["answer"] for q in pocket.load_qa() if q["question"] == QUESTION)
    driver = browser
    wait = WebDriverWait(driver, HANG_GUARD_S, poll_frequency=0.1)  # ends when the state arrives
    driver.get(f"{lab['url']}/lab/tree/chat.ipynb?token={lab['token']}")
    wait.until(lambda d: d.execute_script(KERNEL_READY))
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".phi3kit-chat")) == 2)
    except Exception:
        save_screenshot(driver, tmp_path, "chat-panel-missing.png")
        outputs = driver.execute_script("return [...document.querySelectorAll('.jp-OutputArea')].map(o => o.innerText)")
        pytest.fail(f"the chat panels did not render; cell outputs: {outputs!r}; server log tail:\n"
                    f"{lab['log'].read_text()[-2000:]}")
    pocket_panel, noisy_panel = driver.find_elements(By.CSS_SELECTOR, ".phi3kit-chat")
    assert "System prompt" in pocket_panel.find_element(By.CSS_SELECTOR, ".phi3kit-chat-transcript").text

    # 1. A training question: the exact answer streams in.
    driver.execute_script(OBSERVE)
    field = pocket_panel.find_element(By.CSS_SELECTOR, ".phi3kit-chat-input input")
    field.click()
    field.send_keys(QUESTION)
    pocket_panel.find_element(By.CSS_SELECTOR, "button.phi3kit-chat-send").click()
    metrics = pocket_panel.find_element(By.CSS_SELECTOR, ".phi3kit-chat-metrics")
    wait.until(lambda d: "tokens/s" in metrics.text)
    shot = save_screenshot(driver, tmp_path, "chat-panel.png")
    assert last_answer(driver, 0) == answer  # exactly the trained answer, as the browser rendered it
    assert [u.text for u in pocket_panel.find_elements(By.CSS_SELECTOR, ".phi3kit-user span")] == [QUESTION]
    seen = [s for s in driver.execute_script("return window.__seen") if s]
    partial = {s for s in seen if s != answer}
    assert all(answer.startswith(s) for s in seen), "every streamed state is a prefix of the answer"
    assert len(partial) >= 3, f"the answer arrived in {len(partial)} partial states, not streamed: {seen[:5]}"
    assert "(stop)" in metrics.text
    assert not pocket_panel.find_element(By.CSS_SELECTOR, "button.phi3kit-chat-send").get_property("disabled")
    assert shot.stat().st_size > 10_000

    # 2. A long answer: the stop button reaches the kernel while it streams, and the answer stops.
    field = noisy_panel.find_element(By.CSS_SELECTOR, ".phi3kit-chat-input input")
    field.click()
    field.send_keys("Tell me everything.")
    noisy_panel.find_element(By.CSS_SELECTOR, "button.phi3kit-chat-send").click()
    wait.until(lambda d: len(last_answer(d, 1) or "") > 20)
    stop = noisy_panel.find_element(By.CSS_SELECTOR, "button.phi3kit-chat-stop")
    assert not stop.get_property("disabled")
    stop.click()
    metrics = noisy_panel.find_element(By.CSS_SELECTOR, ".phi3kit-chat-metrics")
    WebDriverWait(driver, HANG_GUARD_S, poll_frequency=0.1).until(lambda d: "tokens/s" in metrics.text)
    save_screenshot(driver, tmp_path, "chat-panel-stopped.png")
    # Stopped early, by the click: with ignore_eos only the click can end the answer before LONG tokens.
    assert "(cancelled)" in metrics.text and last_answer(driver, 1).endswith("[stopped]"), metrics.text
    assert int(metrics.text.split()[0]) < LONG, metrics.text


# --- handouts of the translated notebooks --------------------------------------------------------------
DIRECTIONS = """
const md = [...document.querySelectorAll('.jp-MarkdownCell')];
const rtl = [...document.querySelectorAll('.jp-MarkdownCell div[dir="rtl"]')];
const code = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea .highlight pre')];
const outputs = [...document.querySelectorAll('.jp-CodeCell .jp-OutputArea-output')];
const style = e => getComputedStyle(e).direction;
return {lang: document.documentElement.lang, markdown: md.length,
        headings: md.filter(e => e.querySelector('h1, h2, h3')).length,
        raw_hashes: md.filter(e => e.innerText.trim().startsWith('#')).length,
        prose: md.map(e => style(e.querySelector('div[dir]') || e.querySelector('.jp-RenderedMarkdown') || e)),
        blocks: [...document.querySelectorAll('.jp-MarkdownCell :is(p, h1, h2, h3, li)')].map(style),
        rtl: rtl.length, code: code.map(style), outputs: outputs.map(style),
        text: md.map(e => e.innerText).join(' ')};
"""
SCRIPTS = {"fa": r"[\u0600-\u06FF]", "zh": r"[\u4E00-\u9FFF]"}


@pytest.mark.parametrize(("lang", "direction"), [("fa", "rtl"), ("zh", "ltr")])
def test_translated_handout_reads_in_its_direction_with_code_left_to_right(lang: str, direction: str, browser: Any,
                                                                          tmp_path: Path) -> None:
    """The committed notebook (its stored outputs included) as the offline handout, in Chromium with the network
    off: Persian prose right to left, code and outputs left to right; the screenshot shows the script's glyphs."""
    import re

    import nbformat

    from phi3kit.runner import external_references, to_html

    fonts = subprocess.run(["fc-list", f":lang={lang}", "family"], capture_output=True, text=True).stdout
    if not fonts.strip():
        pytest.skip(f"no font covers {lang!r}: run .ci/setup-browser (fonts-farsiweb, fonts-wqy-microhei)")
    source = Path(__file__).resolve().parents[1] / "notebooks" / lang / "openvino.ipynb"
    shutil.copy(source, tmp_path / "openvino.ipynb")
    page = to_html(tmp_path / "openvino.ipynb")
    assert external_references(page.read_text(encoding="utf-8")) == []
    nb = nbformat.read(str(source), as_version=4)
    n_md = sum(c.cell_type == "markdown" for c in nb.cells)
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    n_outputs = sum(len(c.outputs) for c in nb.cells if c.cell_type == "code")

    driver = browser
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                           {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
    driver.get(page.as_uri())
    seen = driver.execute_script(DIRECTIONS)
    save_screenshot(driver, tmp_path, f"handout-{lang}.png")
    driver.execute_script("document.querySelector('.jp-OutputArea-output').scrollIntoView({block: 'center'})")
    shot = save_screenshot(driver, tmp_path, f"handout-{lang}-output.png")

    assert seen["lang"] == lang
    assert seen["markdown"] == n_md and seen["headings"] >= 3 and seen["raw_hashes"] == 0  # the markdown rendered
    assert seen["prose"] == [direction] * n_md
    # The paragraphs, headings and list items themselves, not only their wrapper: nbconvert once closed the
    # wrapper before its prose, which then read left to right under an rtl <div>.
    assert len(seen["blocks"]) > n_md and set(seen["blocks"]) == {direction}
    assert seen["rtl"] == (n_md if direction == "rtl" else 0)
    assert len(seen["code"]) == n_code and set(seen["code"]) == {"ltr"}
    assert n_outputs >= 1 and len(seen["outputs"]) >= n_outputs and set(seen["outputs"]) == {"ltr"}
    assert len(re.findall(SCRIPTS[lang], seen["text"])) > 500  # the prose is in the language's own script
    assert shot.stat().st_size > 10_000


LAB_DIRECTIONS = """
const style = e => getComputedStyle(e).direction;
const prose = document.querySelectorAll('.jp-MarkdownCell .jp-RenderedMarkdown :is(p, h1, h2, h3, li)');
return {prose: [...prose].map(style),
        code: [...document.querySelectorAll('.jp-CodeCell .jp-InputArea .cm-content')].map(style)};
"""


def test_persian_notebook_reads_right_to_left_in_jupyterlab(lab: dict[str, Any], browser: Any) -> None:
    """Where learners read it: JupyterLab renders each translated markdown cell whole, so the wrapper's dir
    must reach the paragraphs and headings there too, while the code cells stay left to right."""
    from selenium.webdriver.support.ui import WebDriverWait

    shutil.copy(Path(__file__).resolve().parents[1] / "notebooks" / "fa" / "openvino.ipynb", lab["root"] / "fa.ipynb")
    driver = browser
    driver.get(f"{lab['url']}/lab/tree/fa.ipynb?token={lab['token']}")

    def rendered(d: Any) -> dict[str, list[str]] | None:
        seen = d.execute_script(LAB_DIRECTIONS)
        return seen if len(seen["prose"]) >= 5 and len(seen["code"]) >= 2 else None

    seen = WebDriverWait(driver, HANG_GUARD_S, poll_frequency=0.2).until(rendered)  # ends once the cells render
    assert set(seen["prose"]) == {"rtl"}, seen["prose"]
    assert set(seen["code"]) == {"ltr"}, seen["code"]
