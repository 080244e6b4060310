"""Authoring source of notebooks/directml.ipynb: `python tools/make_directml_notebook.py`, then
`python tools/store_outputs.py notebooks/directml.ipynb` to store the checked outputs."""

from pathlib import Path

from nbcells import write

ROOT = Path(__file__).resolve().parents[1]
cells = [
("md", """
# Phi-3 with ONNX Runtime GenAI (DirectML, CUDA or CPU)

This notebook runs Phi-3 locally with [ONNX Runtime GenAI](https://onnxruntime.ai/docs/genai/): it
**builds** an ONNX model from the Hugging Face checkpoint (compressing its weights to int4 or int8),
**loads** it on an execution provider, **streams** an answer token by token, and **measures** how
fast it was.

**DirectML** is Microsoft's machine-learning layer on top of DirectX 12: one Windows driver path for
any DirectX 12 GPU, whether Intel, AMD, NVIDIA or Qualcomm. ONNX Runtime calls it an *execution
provider* (`dml`). DirectML is now in **sustained engineering**: it keeps getting fixes, not new
features. For new applications Microsoft points to **Windows ML**, which ships ONNX Runtime with
Windows and downloads the execution provider that fits the machine's NPU or GPU. The model you
build here is a plain ONNX model either way.

The same notebook runs on NVIDIA GPUs (`device = "CUDA"`) and on any CPU (`device = "CPU"`).
The defaults run the real Phi-3-mini (`phi-3-mini-4k`: Microsoft's ready-made ONNX build for the
device, a 2-3 GB download the first time). Offline, or in a hurry? Set `model = "pocket"`: a tiny
teaching model with Phi-3's architecture, shipped inside the kit. It answers a few dozen questions
about AI PCs; it is not Phi-3's quality.
"""),
("md", """
## Parameters

Edit these here, or override them from the command line without opening the notebook:
`papermill directml.ipynb out.ipynb -p model pocket -p device CPU`.
"""),
("parameters", """
model: str = "phi-3-mini-4k"  # catalog alias (`phi3kit models`), hub id, folder, or "pocket" (offline)
precision: str = "int4"  # weights: int4 (smallest, fastest) | int8 | fp16 (GPU builds) | fp32 (CPU only)
device: str = "DML"  # the provider that runs the model: DML (DirectML, Windows GPU) | CUDA (NVIDIA GPU) | CPU
fallback_to_cpu: bool = False  # if the device is missing: True runs its build on the CPU (and says so), False stops
build_target: str = ""  # what the builder optimizes for: dml | cuda | cpu ("" follows device)
block_size: int = 0  # export only: int4/int8 weights per scale (16, 32, 64, 128, 256); 0 the builder's 32
prefer: str = ""  # "": ready-made where one is published | ready-made | export (converted here)
max_new_tokens: int = 128  # upper bound on the answer's length, in tokens
prompt: str = "Can you introduce yourself?"  # what you ask the model
system: str = ""  # optional system prompt (empty: none)
do_sample: bool = False  # False: greedy (same answer every run); True: sampled
cache_dir: str = ""  # where built models are kept (empty: phi3kit's default cache folder)
"""),
("md", """
## 1. Check the machine

`kit.doctor()` lists the libraries this environment has. The `onnxruntime_genai` module comes in
three pip packages, one per provider family, and only one may be installed:
`onnxruntime-genai` (CPU), `onnxruntime-genai-directml` (Windows) and `onnxruntime-genai-cuda`.
"""),
("code", """
import phi3kit as kit

kit.doctor()
"""),
("md", """
Which providers can really run here? The kit opens a session on each one with a three-node model,
instead of trusting the package's `is_*_available()` flags, which only say how it was compiled.
"""),
("code", """
kit.backends.get("ortgenai").devices("genai")
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
## 2. Get the ONNX model: ready-made, or built here

`python -m onnxruntime_genai.models.builder` reads the checkpoint and writes `model.onnx`, its
weights, the tokenizer and `genai_config.json` (the generation loop's settings). Two choices shape it:

* **precision** (`-p`): int4 and int8 store each weight matrix in blocks of `block_size` values
  that share one scale (`MatMulNBits`); fp16 and fp32 keep floats. DirectML takes int4 or fp16.
* **build target** (`-e`): the provider whose fused operators and data types the graph uses.
  It follows `device` unless you set `build_target`. A DirectML build still runs on the CPU, which
  is how this notebook is tested on Linux.

The kit refuses the builder's known traps before it starts (fp32 for a GPU, bf16 on the CPU, head
sizes its attention kernel cannot run) and caches each build: the second run takes milliseconds.
If `device` is missing on this machine, this cell stops and names the package to install.
"""),
("code", """
options = dict(device=device, fallback_to_cpu=fallback_to_cpu, build_target=build_target or None,
               group_size=block_size or None, cache_dir=cache_dir or None, prefer=prefer or None)
export = kit.export(model, "ortgenai", precision, **options)
print(export.route, "|", "reused" if export.cached else "built", "|", export.recipe)
"""),
("md", """
## 3. Load it on the device

Loading reads `genai_config.json`, replaces the providers stored there with the one `device`
names, and creates the ONNX Runtime session. With `fallback_to_cpu=True` and no such device, the
export step above printed a line saying that the model runs on the CPU instead.
"""),
("code", """
session = kit.load(model, "ortgenai", precision, **options)
print(session, "| provider:", session.backend.provider, f"| loaded in {session.load_s:.2f} s")
"""),
("md", """
## 4. Stream an answer

The prompt is wrapped in Phi-3's chat template (`<|user|>` ... `<|end|>` `<|assistant|>`). ONNX
Runtime GenAI then reads the whole prompt in one pass and produces one token per step; the kit
turns ids into text and stops at `<|end|>`, the model's end-of-turn token.
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
* **Peak RSS**: the most memory this Python process used while generating (GPU memory is not in it).
"""),
("code", """
response.metrics
"""),
("md", """
Each bar is one token's latency. The first (orange) is the time to first token; the rest are
decode steps, which should be flat: each reads all the weights once.
"""),
("code", """
response.metrics.plot();
"""),
("md", """
## Under the hood: the generation loop

The kit's backend is a few lines of the ONNX Runtime GenAI API. Written by hand, it looks like this
(older tutorials call `generator.compute_logits()` and set `params.input_ids`: both were removed in
version 0.6; `append_tokens` now feeds the prompt and `generate_next_token` does the rest):

```python
import json
import onnxruntime_genai as og

config = og.Config(str(export.path))
config.clear_providers()              # drop the provider stored at build time...
config.append_provider("dml")         # ...and pick the one to run on ("cuda"; nothing for the CPU)
model = og.Model(config)
tokenizer = og.Tokenizer(model)

messages = [{"role": "user", "content": prompt}]
text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
ids = tokenizer.encode(text)

params = og.GeneratorParams(model)
params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
generator = og.Generator(model, params)
generator.append_tokens(ids)
stream = tokenizer.create_stream()    # holds back half a UTF-8 character until it is complete
while not generator.is_done():
    generator.generate_next_token()
    print(stream.decode(generator.get_next_tokens()[0]), end="", flush=True)
```

The kit's tests check that this tokenizer and the kit's give the same ids and the same text.
"""),
("md", """
## Next

* Re-run with `precision = "int8"` or `block_size = 128` and compare the tokens/s.
* On Windows with a DirectX 12 GPU: `pip install -r requirements/directml.txt`, then `device = "DML"`.
* On an NVIDIA GPU: `pip install -r requirements/cuda.txt`, then `device = "CUDA"`.
* `notebooks/openvino.ipynb` runs the same model through OpenVINO, on Intel CPUs, GPUs and NPUs.
"""),
]
write(ROOT / "notebooks" / "directml.ipynb", cells, "Phi-3 with ONNX Runtime GenAI (DirectML)")
