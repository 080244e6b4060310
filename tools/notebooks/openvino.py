"""English source of notebooks/openvino.ipynb (build: `python tools/notebooks/build.py`)."""

from nb import canary_cells, answer_cell, code, md, parameters, plot_cells, speed_md

TITLE = "Phi-3 on OpenVINO"
CELLS = [
md("intro", """
# Phi-3 on OpenVINO

This notebook runs Phi-3 locally with [OpenVINO](https://docs.openvino.ai), Intel's toolkit for running
trained models fast on Intel CPUs, integrated GPUs and NPUs. It gets the model in OpenVINO's format
(its *IR*: an `openvino_model.xml` graph and an `openvino_model.bin` of weights), **loads** it on a
device, **streams** an answer token by token and **measures** how fast it was. Then it does the same
again **with the libraries alone**, to show that the helper hides nothing.

The first half goes through `phi3kit` (`import phi3kit as kit`), a thin helper whose code you can
read beside this notebook. The defaults run the real Phi-3-mini; offline, or in a hurry, set
`model = "pocket"`: a tiny teaching model with Phi-3's architecture, shipped inside the kit. It knows
a few dozen answers about AI PCs and is nowhere near Phi-3's quality.
"""),
md("params-intro", """
## Parameters

Edit them here, or from the command line without opening the notebook:
`phi3kit run notebooks/openvino.ipynb -p model pocket -p precision int8`.
"""),
parameters("parameters", """
model: str = "phi-3-mini-4k"  # catalog alias (`phi3kit models`), hub id, folder, or "pocket" (offline)
precision: str = "int4"  # weights: int4 (the seed's recipe) | int4-cw (channel-wise: smaller, often faster) | int8 | fp16 | fp32
device: str = "CPU"  # CPU | GPU | NPU | AUTO: see the device check below
runtime: str = "genai"  # genai: OpenVINO GenAI (C++ loop) | optimum: optimum-intel (the seed's route)
prefer: str = ""  # "": ready-made where one is published | ready-made | export (converted here)
max_new_tokens: int = 128  # the longest answer, in tokens
prompt: str = "Can you introduce yourself?"  # what you ask the model
chat_prompt: str = "What is an NPU?"  # the chat section's first question
follow_up: str = "What is OpenVINO GenAI?"  # and its second
system: str = ""  # optional system prompt; empty for none
do_sample: bool = False  # False: greedy, the same answer every run | True: sampled
cache_dir: str = ""  # folder for exports; empty for the kit's default (PHI3KIT_CACHE or the user cache)
"""),
md("doctor-md", """
## 1. Check the machine

`kit.doctor()` lists the processor and its instruction sets, the memory, the libraries in this
environment and the devices OpenVINO can see. If `GPU` or `NPU` is missing, its driver is missing:
the table says so before anything is downloaded.
"""),
code("doctor", """
import phi3kit as kit

kit.doctor()
"""),
*canary_cells('routes=["openvino"], runtimes=[runtime]'),
md("ready-md", """
## 2. Ready-made, or exported here?

`phi-3-mini-4k` is an alias from the kit's catalog (`kit.models()`). For most devices and precisions
someone has already converted it: OpenVINO's `OpenVINO/` organisation on the Hugging Face hub
publishes IR folders (int4, int8, fp16, and `-cw-` channel-wise int4 for the NPU). A **ready-made**
folder is used as it is: a 2-3 GB download, no conversion, no PyTorch needed, and its weights follow
its publisher's recipe. An **export** (`prefer = "export"`, or an export setting such as a group
size) downloads the 7.6 GB PyTorch checkpoint and converts it here with the seed's recipe; that peaks
near 11 GB of RAM and takes minutes, which is where a 16 GB laptop struggles. `docs/benchmarks.md`
has both measured side by side.

What the int4 settings of an export do:

* **group size** (`--group-size 128`): every 128 weights share one scale; smaller groups follow the
  weights more closely and cost a little more memory. `-1` means one scale per output channel
  (*channel-wise*), what the NPU wants.
* **ratio** (`--ratio 0.6`): the share of layers compressed to int4; the rest, the most sensitive
  40%, stay int8.
* **symmetric** (`--sym`): scales centred on zero, no zero point.

Either way the result is cached, so the second run of this cell takes milliseconds.
"""),
code("get", """
export = kit.export(model, "openvino", precision, cache_dir=cache_dir or None, prefer=prefer or None)
print(export.route, "|", "reused" if export.cached else "built", "|", export.recipe)
"""),
md("load-md", """
## 3. Load it on a device

Loading compiles the model for the device. With `runtime = "genai"` the generation loop runs in C++
(OpenVINO GenAI's `LLMPipeline`); `runtime = "optimum"` is the seed tutorial's route (optimum-intel's
`OVModelForCausalLM`, a Python loop through transformers' `generate`).
"""),
code("load", """
session = kit.load(model, "openvino", precision, device, runtime, cache_dir=cache_dir or None,
                   prefer=prefer or None)
print(session, f"loaded in {session.load_s:.2f} s")
"""),
md("answer-md", """
## 4. Stream an answer

The prompt is wrapped in Phi-3's chat template (`<|user|>` ... `<|end|>` `<|assistant|>`) and the answer
arrives token by token. Generation stops at `<|end|>`, the model's end-of-turn token, instead of running
on to `max_new_tokens`. The answer stored in this file comes from the pocket model with the test values
(`model = "pocket"`, `precision = "int8"`); running the notebook prints yours.
"""),
answer_cell(),
speed_md(),
code("metrics", """
response.metrics
"""),
code("record", """
kit.record(response.metrics, precision=precision, device=device, runtime=runtime)  # kept for `phi3kit run` tables
"""),
*plot_cells(),
md("library-md", """
## 6. The same with the libraries alone

The kit's helpers are a few lines of each library's own API. Here they are, run on the model the
notebook just prepared, each section ending with a check that the library's greedy answer is the
kit's.

### The export, by hand

`optimum-cli export openvino` is the command the kit runs when it exports: it reads the PyTorch
checkpoint, compresses the weights with NNCF and writes the IR plus OpenVINO's own tokenizer models
(`openvino_tokenizer.xml`, `openvino_detokenizer.xml`), which OpenVINO GenAI needs. This cell writes
the command out for the current `precision`; the next one checks it is the kit's, argument for
argument, and the one after runs it (in a folder of its own, once: delete it to run it again).
"""),
code("cli", """
import importlib.util
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

weight_format = "int4" if precision.startswith("int4") else precision
int4_flags = {"int4": ["--group-size", "128", "--ratio", "0.6", "--sym", "--group-size-fallback", "adjust"],
              "int4-cw": ["--group-size", "-1", "--ratio", "1.0", "--sym", "--group-size-fallback", "adjust"]}
by_hand = kit.ExportCache(cache_dir or None).root / "by-hand" / f"{Path(model).name}-{precision}"
command = ["optimum-cli", "export", "openvino", "--model", kit.checkpoint(model), "--task",
           "text-generation-with-past", "--weight-format", weight_format, *int4_flags.get(precision, []),
           str(by_hand)]
print(shlex.join(command))
"""),
code("cli-check", """
kit_command = kit.backends.get("openvino").export_command(kit.checkpoint(model), by_hand, session.config, {}, print)
assert command[1:] == kit_command[3:]  # the kit starts the same program as `python -m optimum.commands.optimum_cli`
print("the kit runs exactly this command")
"""),
code("cli-run", """
import sysconfig

optimum_cli = shutil.which("optimum-cli", path=sysconfig.get_path("scripts"))  # the one of this environment
if importlib.util.find_spec("optimum") is None or optimum_cli is None:
    print("optimum-intel is not installed here (the lean environment): exporting needs requirements/openvino.txt")
elif (by_hand / "openvino_model.xml").is_file():
    print(f"{by_hand} already holds this export: delete the folder to run the command again")
else:
    done = subprocess.run([optimum_cli, *command[1:]], capture_output=True, encoding="utf-8",
                          errors="replace")
    print(done.stdout[-2000:] if done.returncode == 0 else done.stderr[-2000:])
    done.check_returncode()
    print(sorted(p.name for p in by_hand.iterdir()))
"""),
md("genai-md", """
### OpenVINO GenAI's `LLMPipeline`

`LLMPipeline(folder, device)` compiles the IR and runs the whole generation loop in C++. Given a string it
applies the model's chat template itself and answers with a string; given a list of strings it answers
with `DecodedResults`, whose `perf_metrics` keeps the timings (time to first token, throughput, and more:
`help(result.perf_metrics)`). A *streamer* receives the text as it is made: return `RUNNING` to go on,
`STOP` to stop.
"""),
code("genai", """
import openvino_genai as ov_genai

pipe = ov_genai.LLMPipeline(str(export.path), device, **session.backend.properties)  # the kit's compile options
config = pipe.get_generation_config()
config.max_new_tokens = max_new_tokens
config.do_sample = False
pieces = []


def streamer(piece: str) -> ov_genai.StreamingStatus:
    pieces.append(piece)
    print(piece, end="", flush=True)
    return ov_genai.StreamingStatus.RUNNING


result = pipe.generate([prompt], config, streamer)  # a list of one prompt: DecodedResults, with its timings
perf = result.perf_metrics
print(f"\\nTTFT {perf.get_ttft().mean:.1f} ms, {perf.get_throughput().mean:.1f} tokens/s")
"""),
code("genai-check", """
kit_answer = session.generate(prompt, max_new_tokens=max_new_tokens).text
# an answer cut at max_new_tokens may end inside a character: the library shows it as �, the kit holds it back
library_text = "".join(pieces).strip().removesuffix("\\ufffd")
assert library_text == kit_answer.strip()
print("LLMPipeline's greedy answer is the kit's")
"""),
md("optimum-md", """
### optimum-intel's `OVModelForCausalLM` (the seed tutorial's route)

optimum-intel wraps the same IR in a transformers model: `generate()` runs the loop in Python, one
OpenVINO inference per token. The seed passes its device settings in `ov_config`: `PERFORMANCE_HINT`
(`LATENCY`: one request as fast as possible), `NUM_STREAMS` (parallel inference streams: one) and
`CACHE_DIR` (where compiled blobs are kept: empty, none). It needs PyTorch and transformers, which the
lean environment does not have.
"""),
code("optimum", """
if importlib.util.find_spec("optimum") is None:
    optimum_answer = None
    print("optimum-intel is not installed here (the lean environment): this cell needs requirements/openvino.txt")
else:
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    ov_config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "CACHE_DIR": ""}
    ov_model = OVModelForCausalLM.from_pretrained(str(export.path), device=device, ov_config=ov_config)
    tokenizer = AutoTokenizer.from_pretrained(str(export.path))
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = ov_model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    optimum_answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(optimum_answer)
"""),
code("optimum-check", """
if optimum_answer is not None:
    # an answer cut at max_new_tokens may end inside a character: transformers shows it as �, the kit holds it back
    assert optimum_answer.strip().removesuffix("\\ufffd") == kit_answer.strip()
    print("OVModelForCausalLM's greedy answer is the kit's")
"""),
md("chat-md", """
## 7. Chat

`kit.chat(session)` opens a chat panel in JupyterLab (or any notebook frontend): type a question,
press Enter or **Send**, and the answer streams in; **Stop** ends it mid-way, **Reset** forgets the
conversation. The panel keeps the history with the system prompt, and when the conversation outgrows
the model's context window it leaves out the oldest turns and says so. In a headless run
(`phi3kit run`) there is nothing to click, so the cell only prints a note. The same chat in a terminal:
`phi3kit chat --model pocket`.
"""),
code("chat", """
kit.chat(session, system=system or None, max_new_tokens=max_new_tokens)
"""),
md("conv-md", """
From code, `kit.Conversation` does what the panel does: `say()` adds your turn, and the answer joins the
history once you have read it. Here the window is made tiny on purpose (Phi-3-mini-4k's holds 4096
tokens) to watch the oldest turn make room for the new question. The pocket model learned single
questions, so it answers best with earlier turns out of the window; Phi-3 uses them. The output stored
here is the pocket model's, with the test values.
"""),
code("conv", """
# NBVAL_CHECK_OUTPUT
head = [{"role": "system", "content": system}] if system else []
longest = max(len(session.encode(head + [{"role": "user", "content": q}])) for q in [chat_prompt, follow_up])
conv = kit.Conversation(session, system=system or None, max_new_tokens=max_new_tokens,
                        context_length=max_new_tokens + longest + 40)  # tiny on purpose: room for a question, not a turn
for question in [chat_prompt, follow_up]:
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
md("next", """
## Next

* Re-run with `precision = "int8"` or `"fp16"` and compare the tokens/s.
* `phi3kit tune` times OpenVINO's settings on this machine and keeps the fastest (the compare notebook
  shows it).
* Try `device = "GPU"` or `"NPU"` on an Intel Core Ultra laptop (`notebooks/npu.ipynb` explains the NPU).
* `notebooks/directml.ipynb` runs the same model through ONNX Runtime GenAI.
"""),
]
