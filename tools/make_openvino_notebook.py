"""Authoring source of notebooks/openvino.ipynb: `python tools/make_openvino_notebook.py`, then
`python tools/store_outputs.py notebooks/openvino.ipynb` to store the checked outputs."""

from pathlib import Path

from nbcells import write

ROOT = Path(__file__).resolve().parents[1]
cells = [
("md", """
# Phi-3 on OpenVINO

This notebook runs Phi-3 locally with [OpenVINO](https://docs.openvino.ai): it **exports** the
model to OpenVINO's format (compressing its weights to int4, int8 or fp16), **loads** it on a
device (CPU, integrated GPU or NPU), **streams** an answer token by token, and **measures** how
fast it was.

Every step goes through `phi3kit`, a thin helper whose code you can read next to this notebook.
The defaults run the real Phi-3-mini (`phi-3-mini-4k`: its ready-made int4 IR, a 2-3 GB download the
first time). Offline, or in a hurry? Set `model = "pocket"`: a tiny teaching model with Phi-3's
architecture, shipped inside the kit. It answers a few dozen questions about AI PCs; it is not
Phi-3's quality.
"""),
("md", """
## Parameters

Edit these here, or override them from the command line without opening the notebook:
`papermill openvino.ipynb out.ipynb -p model pocket -p precision int8`.
"""),
("parameters", """
model: str = "phi-3-mini-4k"  # catalog alias (`phi3kit models`), hub id, folder, or "pocket" (offline)
precision: str = "int4"  # weights: int4 (smallest, fastest) | int8 | fp16 | fp32 (full precision)
device: str = "CPU"  # CPU | GPU | NPU | AUTO: see the device check below
runtime: str = "genai"  # genai: OpenVINO GenAI (C++ loop, faster) | optimum: optimum-intel (the seed route)
prefer: str = ""  # "": ready-made where one is published | ready-made | export (converted here)
max_new_tokens: int = 128  # upper bound on the answer's length, in tokens
prompt: str = "Can you introduce yourself?"  # what you ask the model
system: str = ""  # optional system prompt; empty for none
do_sample: bool = False  # False: greedy, the same answer every run | True: sampled
cache_dir: str = ""  # folder for exports; empty for the kit default (PHI3KIT_CACHE or the user cache)
"""),
("md", """
## 1. Check the machine

`kit.doctor()` lists the libraries this environment has and the devices OpenVINO can see.
If `GPU` or `NPU` is missing here, the device's driver is missing: the table tells you before
an export wastes your time.
"""),
("code", """
import phi3kit as kit

kit.doctor()
"""),
("md", """
## Ready-made or export?

`model = "phi-3-mini-4k"` is an alias from the kit's catalog (`kit.models()`, `phi3kit models`). For
most routes its publisher already converted it and put the result on the hub: OpenVINO's `OpenVINO/`
organisation (IR folders, `-cw-` channel-wise for the NPU) and Microsoft's `-onnx` repos. Such a
**ready-made** folder is loaded as it is: a 2-3 GB download, no conversion, no PyTorch needed, and it
uses its publisher's recipe (the session says which). An **export** (`prefer = "export"`, or any
export setting such as `group_size`) downloads the 7.6 GB PyTorch checkpoint and converts it here with
the kit's own recipe: that peaks near 11 GB of RAM for OpenVINO int4 (24 GB for the ONNX Runtime GenAI
builder) and takes minutes, which is where a 16 GB laptop gives up. docs/benchmarks.md has the numbers
measured side by side; a workshop can avoid both with a pack prepared once (`phi3kit pack`).
"""),
("md", """
## 2. Get the model: ready-made, or exported here

A Hugging Face checkpoint is PyTorch weights. `optimum-cli export openvino` converts it to
OpenVINO's IR (`openvino_model.xml` + `.bin`) and compresses the weights with NNCF:

* **int4**: weights in groups of 128 share one scale (`group_size`), symmetric around zero
  (`sym`); 60% of the layers go to int4 and the most sensitive 40% stay int8 (`ratio`).
  About 4x smaller than fp16, and decoding is limited by memory bandwidth, so it is faster too.
* **int8**: per-channel 8-bit weights; closer to the original model.
* **fp16 / fp32**: no compression.

The export also writes OpenVINO tokenizer models, which OpenVINO GenAI needs. Exports are cached:
the second run of this cell takes milliseconds.
"""),
("code", """
export = kit.export(model, "openvino", precision, cache_dir=cache_dir or None, prefer=prefer or None)
print(export.route, "|", "reused" if export.cached else "built", "|", export.recipe)
"""),
("md", """
## 3. Load it on a device

Loading compiles the model for the device. With `runtime="genai"` the generation loop runs in
C++ (`openvino_genai.LLMPipeline`); `runtime="optimum"` is the seed tutorial's route
(`OVModelForCausalLM`, a Python loop through transformers' `generate`).
"""),
("code", """
session = kit.load(model, "openvino", precision, device, runtime, cache_dir=cache_dir or None,
                   prefer=prefer or None)
print(session, f"loaded in {session.load_s:.2f} s")
"""),
("md", """
## 4. Stream an answer

The prompt is wrapped in Phi-3's chat template (`<|user|>` ... `<|end|>` `<|assistant|>`), and
the answer arrives token by token. Generation stops at `<|end|>`, the model's end-of-turn
token, instead of running on to `max_new_tokens`.
"""),
("code", """
# NBVAL_CHECK_OUTPUT
response = session.generate(prompt, system=system or None, max_new_tokens=max_new_tokens, do_sample=do_sample)
for chunk in response:
    print(chunk, end="", flush=True)
print()
"""),
("md", """
## 5. How fast was it?

* **TTFT** (time to first token): reading the prompt and producing the first token.
* **TPOT** (time per output token) and **tokens/s**: the decode speed after that.
* **Peak RSS**: the most memory this Python process used while generating.
"""),
("code", """
response.metrics
"""),
("code", """
kit.record(response.metrics, precision=precision, device=device, runtime=runtime)  # kept for `phi3kit run` tables
"""),
("md", """
Each bar is one token's latency. The first (orange) is the time to first token; the rest are
decode steps, which should be flat: each reads all the weights once.
"""),
("code", """
response.metrics.plot();
"""),
("md", """
## 6. Chat

`kit.chat(session)` opens a chat panel in JupyterLab (or any notebook frontend): type a question,
press Enter or **Send**, and the answer streams in; **Stop** ends it mid-way, **Reset** forgets the
conversation. The panel keeps the history with the system prompt, and when the conversation
outgrows the model's context window it leaves out the oldest turns and says so. Each answer ends
with its metrics line. In a headless run (`phi3kit run`) there is nothing to click, so the cell
only prints a
note. The same chat in a terminal: `phi3kit chat --model pocket`.
"""),
("code", """
kit.chat(session, system=system or None, max_new_tokens=max_new_tokens)
"""),
("md", """
From code, a `kit.Conversation` does what the panel does: `say()` adds your turn, and the answer joins
the history once you have read it. Here the window is made tiny on purpose (Phi-3-mini-4k's own holds
4096 tokens) to watch the oldest turn make room for the new question. The pocket model learned
single questions, so it answers best with earlier turns out of the window; Phi-3 uses them.
"""),
("code", """
# NBVAL_CHECK_OUTPUT
conv = kit.Conversation(session, system=system or None, max_new_tokens=max_new_tokens,
                        context_length=max_new_tokens + 40)  # tiny on purpose: room for a question, not a turn
for question in ["What is an NPU?", "What is OpenVINO GenAI?"]:
    print("You:  ", question)
    response = conv.say(question)
    if response.trim_notice:
        print(f"[{response.trim_notice}]")
    print("Model: ", end="")
    for chunk in response:
        print(chunk, end="", flush=True)
    print()
print(len(conv.history), "messages in conv.history")
"""),
("md", """
## Next

* Re-run with `precision = "int8"` or `"fp16"` and compare the tokens/s.
* Try `device = "GPU"` or `"NPU"` on an Intel Core Ultra laptop.
* `notebooks/directml.ipynb` runs the same model through ONNX Runtime GenAI.
"""),
]
write(ROOT / "notebooks" / "openvino.ipynb", cells, "Phi-3 on OpenVINO")
