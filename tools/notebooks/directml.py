"""English source of notebooks/directml.ipynb (build: `python tools/notebooks/build.py`)."""

from nb import canary_cells, answer_cell, code, md, parameters, plot_cells, speed_md

TITLE = "Phi-3 with ONNX Runtime GenAI (DirectML)"
CELLS = [
md("intro", """
# Phi-3 with ONNX Runtime GenAI: DirectML, CUDA or the CPU

This notebook runs Phi-3 locally with [ONNX Runtime GenAI](https://onnxruntime.ai/docs/genai/), the
generation loop (tokenizer, KV cache, search) built on top of ONNX Runtime. It gets an ONNX model for
a device, **loads** it on an *execution provider*, **streams** an answer token by token and
**measures** how fast it was; then it does the same with the library alone.

**DirectML** is Microsoft's machine-learning layer on DirectX 12: one driver path on Windows for any
DirectX 12 GPU, Intel, AMD, NVIDIA or Qualcomm alike. ONNX Runtime calls it the `dml` provider.
DirectML is now in **sustained engineering**: it gets fixes, not new features, and Microsoft points new
applications to **Windows ML**, which ships ONNX Runtime with Windows and fetches the execution
provider that fits the machine's NPU or GPU. The ONNX model you get here works with either.

**DirectML or CUDA?** On an NVIDIA GPU, the CUDA provider (`device = "CUDA"`, on Windows or Linux) is
NVIDIA's own path and usually the faster one; DirectML is the one build that covers every Windows
GPU. Without a GPU, the CPU provider runs the same model everywhere.

The defaults run the real Phi-3-mini (`phi-3-mini-4k`: Microsoft's ready-made ONNX build for the
device). Offline, or in a hurry? Set `model = "pocket"`: a tiny teaching model with Phi-3's
architecture, shipped inside the kit; it knows a few dozen answers and is not Phi-3's quality.
"""),
md("params-intro", """
## Parameters

Edit them here, or from the command line without opening the notebook:
`phi3kit run notebooks/directml.ipynb -p model pocket -p device CPU`.
"""),
parameters("parameters", """
model: str = "phi-3-mini-4k"  # catalog alias (`phi3kit models`), hub id, folder, or "pocket" (offline)
precision: str = "int4"  # weights: int4 (smallest, fastest) | int8 | fp16 (GPU builds) | fp32 (CPU only)
device: str = "DML"  # the provider that runs the model: DML (DirectML, Windows GPU) | CUDA (NVIDIA GPU) | CPU
fallback_to_cpu: bool = False  # a missing device: True runs its build on the CPU (and says so), False stops
build_target: str = ""  # export only: what the builder builds for, dml | cuda | cpu ("" follows device)
block_size: int = 0  # export only: int4/int8 weights per scale (16, 32, 64, 128, 256); 0 the builder's 32
prefer: str = ""  # "": ready-made where one is published | ready-made | export (converted here)
max_new_tokens: int = 128  # the longest answer, in tokens
prompt: str = "Can you introduce yourself?"  # what you ask the model
system: str = ""  # optional system prompt (empty: none)
do_sample: bool = False  # False: greedy (the same answer every run) | True: sampled
cache_dir: str = ""  # where built models are kept (empty: phi3kit's default cache folder)
"""),
md("doctor-md", """
## 1. Check the machine

`kit.doctor()` lists the libraries this environment has. The `onnxruntime_genai` module comes in
three pip packages, one per provider family, and only one may be installed: `onnxruntime-genai` (CPU),
`onnxruntime-genai-directml` (Windows) and `onnxruntime-genai-cuda`.
"""),
code("doctor", """
import phi3kit as kit

kit.doctor()
"""),
md("devices-md", """
Which providers can really run here? The kit opens a session on each one with a three-node model,
instead of trusting the package's `is_*_available()` flags, which only say how it was compiled.
"""),
code("devices", """
kit.backends.get("ortgenai").devices("genai")
"""),
*canary_cells('routes=["ortgenai"]'),
md("get-md", """
## 2. Get the ONNX model: ready-made, or built here

Microsoft publishes Phi-3 builds for each provider in `microsoft/Phi-3-mini-4k-instruct-onnx`, one
subfolder per build (`cpu_and_mobile/...`, `directml/...`, `cuda/...`). The kit takes the one for
`device` as it is: a 2-3 GB download, no PyTorch needed, built with its publisher's recipe (int4 AWQ
for DirectML, round-to-nearest for the CPU). With `prefer = "export"`, or an export setting such as
`block_size`, it builds one here instead, with ONNX Runtime GenAI's model builder: that downloads the
7.6 GB checkpoint and peaked at 24 GB of RAM for Phi-3-mini on a 2-core machine (docs/benchmarks.md).

The builder (`python -m onnxruntime_genai.models.builder`) writes `model.onnx`, its weights, the
tokenizer and `genai_config.json`, the generation loop's settings. Two choices shape a build:

* **precision** (`-p`): int4 and int8 keep each weight matrix in blocks of `block_size` values that
  share one scale (the `MatMulNBits` operator); fp16 and fp32 keep floats. DirectML takes int4 or fp16.
* **build target** (`-e`): the provider whose fused operators and data types the graph uses. It
  follows `device` unless you set `build_target`. A DirectML build still runs on the CPU, which is how
  this notebook is tested on Linux.

The kit refuses the builder's known traps before it starts (fp32 for a GPU, bf16 on the CPU, head
sizes its attention kernel cannot run) and caches each build. If `device` is missing on this machine,
this cell stops and names the package to install.
"""),
code("get", """
options = dict(device=device, fallback_to_cpu=fallback_to_cpu, build_target=build_target or None,
               group_size=block_size or None, cache_dir=cache_dir or None, prefer=prefer or None)
export = kit.export(model, "ortgenai", precision, **options)
print(export.route, "|", "reused" if export.cached else "built", "|", export.recipe)
"""),
md("load-md", """
## 3. Load it on the device

Loading reads `genai_config.json`, replaces the providers stored there with the one `device` names,
and creates the ONNX Runtime session. With `fallback_to_cpu = True` and no such device, the cell above
printed a line saying that the model runs on the CPU instead.
"""),
code("load", """
session = kit.load(model, "ortgenai", precision, **options)
print(session, "| provider:", session.backend.provider, f"| loaded in {session.load_s:.2f} s")
"""),
md("answer-md", """
## 4. Stream an answer

The prompt is wrapped in Phi-3's chat template (`<|user|>` ... `<|end|>` `<|assistant|>`). ONNX Runtime
GenAI reads the whole prompt in one pass and then makes one token per step; the kit turns ids into
text and stops at `<|end|>`, the model's end-of-turn token. The answer stored in this file comes from
the pocket model with the test values (`model = "pocket"`, `precision = "int8"`, `device = "CPU"`).
"""),
answer_cell(),
speed_md(" (GPU memory is not in it)"),
code("metrics", """
response.metrics
"""),
*plot_cells(),
md("library-md", """
## 6. The same with ONNX Runtime GenAI alone

The kit's backend is a few lines of the library's API, run here on the model the notebook just
prepared. Older tutorials call `generator.compute_logits()` and set `params.input_ids`: both were
removed in version 0.6; `append_tokens` now feeds the prompt and `generate_next_token` does the rest.

* `og.Config(folder)` reads `genai_config.json`; `clear_providers()` drops the provider stored at build
  time and `append_provider()` picks the one to run on (nothing to append for the CPU).
* `og.Model` opens the ONNX Runtime session; `og.Tokenizer` is the model's own tokenizer, and its
  `create_stream()` holds back half a UTF-8 character until it is complete.
* `GeneratorParams.set_search_options` sets the length and the search (greedy here). A model built with
  a sliding window (Phi-3-mini-4k's is 2047 tokens) keeps its KV cache in a window-sized buffer, so
  `max_length` must be at least the window, even for a short answer; `genai_config.json` says so.
"""),
code("library", """
import json

import onnxruntime_genai as og

config = og.Config(str(export.path))
config.clear_providers()
if session.backend.provider != "cpu":
    config.append_provider(session.backend.provider)  # "dml" or "cuda"
og_model = og.Model(config)
tokenizer = og.Tokenizer(og_model)

messages = [{"role": "user", "content": prompt}]
text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
ids = tokenizer.encode(text)

genai_config = json.loads((export.path / "genai_config.json").read_text())
window = genai_config["model"]["decoder"].get("sliding_window", {}).get("window_size", 0)
eos = genai_config["model"]["eos_token_id"]  # <|end|> and <|endoftext|>: where an answer stops
eos = set(eos) if isinstance(eos, list) else {eos}
params = og.GeneratorParams(og_model)
params.set_search_options(max_length=max(len(ids) + max_new_tokens, window), do_sample=False)
generator = og.Generator(og_model, params)
generator.append_tokens(ids)
stream = tokenizer.create_stream()
pieces = []
for _ in range(max_new_tokens):
    if generator.is_done():
        break
    generator.generate_next_token()
    token = generator.get_next_tokens()[0]
    if token in eos:
        break
    piece = stream.decode(token)
    pieces.append(piece)
    print(piece, end="", flush=True)
print()
"""),
code("library-check", """
kit_answer = session.generate(prompt, max_new_tokens=max_new_tokens).text
assert "".join(pieces).strip() == kit_answer.strip()
print("ONNX Runtime GenAI's greedy answer is the kit's")
"""),
md("next", """
## Next

* Re-run with `precision = "int8"`, or `prefer = "export"` with `block_size = 128`, and compare tokens/s.
* On Windows with a DirectX 12 GPU: `pip install -r requirements/directml.txt`, then `device = "DML"`.
* On an NVIDIA GPU: `pip install -r requirements/cuda.txt`, then `device = "CUDA"`.
* `notebooks/openvino.ipynb` runs the same model through OpenVINO, on Intel CPUs, GPUs and NPUs.
"""),
]
