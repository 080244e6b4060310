"""Authoring source of notebooks/npu.ipynb: `python tools/make_npu_notebook.py`, then
`python tools/store_outputs.py notebooks/npu.ipynb` to store the checked outputs."""

from pathlib import Path

from nbcells import write

ROOT = Path(__file__).resolve().parents[1]
cells = [
("md", """
# Phi-3 on the NPU

Intel Core Ultra laptops have three places to run a model: the **CPU**, the integrated **GPU** and
the **NPU** (neural processing unit). This notebook runs Phi-3 on the NPU, two ways:

* **Route 1, `openvino-genai` (the default, supported):** OpenVINO GenAI's `LLMPipeline` on the
  `NPU` device, with the model exported the way the NPU needs it. This is what Intel now recommends.
* **Route 2, `npu-library` (the seed tutorial's route):** `intel-npu-acceleration-library`. Upstream
  archived it (end of life, April 2025); it has a Windows wheel only, and it needs an environment of
  its own (`requirements/npu.txt`: its `neural-compressor==3.1.1` pin needs `numpy<2`, which the
  kit's main environment cannot have). It is here because the seed tutorial uses it.

No NPU here? Set `device = "CPU"` and the same NPU-ready export runs on the CPU. The kit never
switches devices behind your back: a missing NPU is an error that says what is missing.
"""),
("md", """
## CPU, GPU or NPU?

* The **CPU** is general and always there; its vector units (AVX2, AVX-512, AMX) speed up the math.
* The **GPU** has the most compute: the fastest at reading a long prompt.
* The **NPU** is built for **sustained, low-power** neural-network work: it answers at a lower clock
  and a fraction of the power, leaving the CPU and GPU free and the battery alive.

Generating text has two phases. Reading the prompt (*prefill*) is compute-bound: every prompt token
goes through the model at once, and more compute helps. Writing the answer (*decode*) makes one token
at a time, and each token reads **all** the weights from memory once. Decode is therefore
**memory-bound**: tokens/s is capped near *memory bandwidth / model size*, whichever unit does the
math, and on a laptop all three share the same memory. (Measured for this kit: a 2.8 GB int4
Phi-3-mini on a 45 GB/s machine tops out near 16 tokens/s; OpenVINO reaches 12-13.) So the NPU wins
on power, not on peak speed, and int4 weights help every device because they are the fewest bytes.
"""),
("md", """
## Parameters

Edit these here, or from the command line:
`phi3kit run notebooks/npu.ipynb -p model pocket -p device CPU`.
"""),
("parameters", """
model: str = "phi-3-mini-4k"  # catalog alias (`phi3kit models`), hub id, folder, or "pocket" (offline)
route: str = 'openvino-genai'  # openvino-genai (supported) | npu-library (the seed's archived library, Windows only)
precision: str = 'int4'  # openvino-genai: int4 (NPU preset) | fp16; npu-library: int4 | int8 | fp16
device: str = 'NPU'  # NPU | GPU | CPU: never switched silently; pass "CPU" on a machine without an NPU
group_size: int = -1  # int4: -1 channel-wise (fastest; ready-made -cw- folders) | 128 group-wise (an export)
max_prompt_len: int = 1024  # NPU only: the longest prompt the compiled pipeline accepts (MAX_PROMPT_LEN)
min_response_len: int = 128  # NPU only: tokens the pipeline reserves for the answer (MIN_RESPONSE_LEN)
generate_hint: str = 'FAST_COMPILE'  # NPU only: FAST_COMPILE (quicker load) | BEST_PERF (faster decode)
prefer: str = ""  # "": ready-made where one is published | ready-made | export (converted here)
max_new_tokens: int = 128  # upper bound on the answer's length, in tokens
prompt: str = 'What is an NPU?'  # what you ask the model
system: str = ''  # optional system prompt (empty: none)
do_sample: bool = False  # False: greedy (same answer every run) | True: sampled
cache_dir: str = ''  # exports and compiled NPU blobs (empty: the phi3kit default cache folder)
"""),
("md", """
## 1. Check the machine

`kit.doctor()` lists the CPU's instruction sets, the memory and disk an export needs, the devices
OpenVINO sees (with NPU driver and compiler versions), whether the seed's library imports here, and
a recommended route for this machine. The same table is `phi3kit doctor` in a terminal.
"""),
("code", """
import phi3kit as kit

report = kit.doctor()
report
"""),
("md", """
The recommendation is a plain function of those facts: NPU present, then OpenVINO GenAI on the NPU
with int4 channel-wise weights; an Intel GPU, then the GPU; an NVIDIA GPU, then ONNX Runtime GenAI on
CUDA; otherwise the CPU.
"""),
("code", """
print(report.recommendation.why)
print(report.recommendation.call)
"""),
("md", """
## 2. Choose the route

**Route 1** uses the *NPU preset*. The NPU compiles the model for fixed shapes and wants symmetric
4-bit weights, so the export is `--weight-format int4 --sym --ratio 1.0 --group-size -1`:

* `--sym`: weights centred on zero (no zero point), which the NPU requires;
* `--ratio 1.0`: every layer in int4 (the seed's `0.6` keeps 40% in int8, which the NPU does not want);
* `--group-size -1`: one scale per output channel (*channel-wise*), the fastest on the NPU.
  OpenVINO suggests group size 128 for models up to about 4B parameters when accuracy matters more.

On the NPU it also sets the pipeline's shapes: prompts up to `MAX_PROMPT_LEN` tokens, and a context of
`MAX_PROMPT_LEN + MIN_RESPONSE_LEN`; `CACHE_DIR` keeps the compiled blob so the next load is fast.
On the CPU those NPU options are left out (the CPU plugin rejects them); the export stays the same.

**Route 2** hands the Hugging Face checkpoint to the library, which quantizes and compiles it while
loading: `NPUModelForCausalLM.from_pretrained(model, use_cache=True,
config=CompilerConfig(dtype=int4), attn_implementation="sdpa")`.
"""),
("code", """
if route == "openvino-genai":
    config = kit.backends.get("openvino").npu_preset(
        kit.LoadConfig(model, "openvino", precision, device, cache_dir=cache_dir or None, group_size=group_size,
                       prefer=prefer or None),
        max_prompt_len=max_prompt_len, min_response_len=min_response_len, generate_hint=generate_hint)
elif route == "npu-library":
    config = kit.LoadConfig(model, "npu-library", precision, device)
else:
    raise kit.UnknownChoiceError("route", route, ["openvino-genai", "npu-library"])
config
"""),
("md", """
## 3. Get the model

For `phi-3-mini-4k`, route 1 takes OpenVINO's ready-made channel-wise folder
(`OpenVINO/Phi-3-mini-4k-instruct-int4-cw-ov`: exactly the preset's format, no conversion); with
`group_size = 128` or `prefer = "export"` it runs `optimum-cli export openvino` with the preset's
settings instead, and caches the result. Route 2 has nothing to export.
"""),
("code", """
export = kit.export(**config.to_dict())
print(export.route, "|", "reused" if export.cached else "built", "|", export.recipe)
"""),
("md", """
## 4. Load

Loading compiles the model for the device. On the NPU the first compile of Phi-3-mini takes a while;
with `CACHE_DIR` set, later loads read the compiled blob instead. If the NPU driver is too old, this
is where the kit says so, with the driver version it found and where to update it.
"""),
("code", """
session = kit.load(**config.to_dict())
print(session, f"loaded in {session.load_s:.2f} s")
"""),
("md", """
## 5. Stream an answer

The prompt is wrapped in Phi-3's chat template, and the answer arrives token by token until the
model's end-of-turn token `<|end|>`.
"""),
("code", """
# NBVAL_CHECK_OUTPUT
response = session.generate(prompt, system=system or None, max_new_tokens=max_new_tokens, do_sample=do_sample)
for chunk in response:
    print(chunk, end="", flush=True)
print()
"""),
("md", """
## 6. How fast was it?

**TTFT** is the prefill (compute-bound); **tokens/s** is the decode (memory-bound). On the NPU the
prompt is padded to its compiled shape, so TTFT barely changes with the prompt's length.
"""),
("code", """
response.metrics
"""),
("code", """
response.metrics.plot(title=f"{config.backend} on {config.device}");
"""),
("md", """
## Next

* Re-run with `device = "CPU"` (and `"GPU"`) and compare tokens/s and TTFT with the NPU's.
* Try `group_size = 128` (group-wise int4) or `precision = "fp16"` and compare answers.
* Run the seed's route with `route = "npu-library"`, in its own Windows environment.
"""),
]
write(ROOT / "notebooks" / "npu.ipynb", cells, "Phi-3 on the NPU")
