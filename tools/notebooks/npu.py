"""English source of notebooks/npu.ipynb (build: `python tools/notebooks/build.py`)."""

from nb import canary_cells, answer_cell, code, md, parameters

TITLE = "Phi-3 on the NPU"
CELLS = [
md("intro", """
# Phi-3 on the NPU

Intel Core Ultra laptops have three places to run a model: the **CPU**, the integrated **GPU** and the
**NPU** (neural processing unit). This notebook runs Phi-3 on the NPU, two ways:

* **Route 1, `openvino-genai` (the default, supported):** OpenVINO GenAI's `LLMPipeline` on the `NPU`
  device, with the model in the format the NPU needs. This is what Intel now recommends.
* **Route 2, `npu-library` (the seed tutorial's route):** `intel-npu-acceleration-library`. Upstream
  archived it (end of life, April 2025); it has a Windows wheel only, and it needs an environment of its
  own (`requirements/npu.txt`: its `neural-compressor==3.1.1` pin needs `numpy<2`, which the kit's main
  environment cannot have). It is here because the seed tutorial uses it.

No NPU here? Set `device = "CPU"` and the same NPU-ready model runs on the CPU. The kit never switches
devices behind your back: a missing NPU is an error that says what is missing.
"""),
md("why-npu", """
## CPU, GPU or NPU?

* The **CPU** is general and always there; its vector units (AVX2, AVX-512, AMX) speed up the math.
* The **GPU** has the most compute: the fastest at reading a long prompt.
* The **NPU** is built for **sustained, low-power** neural-network work: it answers at a lower clock and
  a fraction of the power, leaving the CPU and GPU free and the battery alive.

Generating text has two phases. Reading the prompt (*prefill*) is compute-bound: every prompt token goes
through the model at once, and more compute helps. Writing the answer (*decode*) makes one token at a
time, and each token reads **all** the weights from memory once. Decode is therefore **memory-bound**:
tokens/s is capped near *memory bandwidth / model size*, whichever unit does the math, and on a laptop
all three share the same memory. So the NPU wins on power and on keeping the other units free, not on
peak speed, and int4 weights help every device because they are the fewest bytes to read.
`docs/benchmarks.md` has the numbers measured for this kit, next to that bandwidth limit.
"""),
md("params-intro", """
## Parameters

Edit them here, or from the command line: `phi3kit run notebooks/npu.ipynb -p model pocket -p device CPU`.
"""),
parameters("parameters", """
model: str = "phi-3-mini-4k"  # catalog alias (`phi3kit models`), hub id, folder, or "pocket" (offline)
route: str = "openvino-genai"  # openvino-genai (supported) | npu-library (the seed's archived library, Windows)
precision: str = "int4"  # openvino-genai: int4 (the NPU preset) | fp16; npu-library: int4 | int8 | fp16
device: str = "NPU"  # NPU | GPU | CPU: never switched silently; pass "CPU" on a machine without an NPU
group_size: int = -1  # int4: -1 channel-wise (fastest; ready-made -cw- folders) | 128 group-wise (an export)
max_prompt_len: int = 1024  # NPU only: the longest prompt the compiled pipeline accepts (MAX_PROMPT_LEN)
min_response_len: int = 128  # NPU only: tokens the pipeline reserves for the answer (MIN_RESPONSE_LEN)
generate_hint: str = "FAST_COMPILE"  # NPU only: FAST_COMPILE (quicker load) | BEST_PERF (faster decode)
prefer: str = ""  # "": ready-made where one is published | ready-made | export (converted here)
max_new_tokens: int = 128  # the longest answer, in tokens
prompt: str = "What is an NPU?"  # what you ask the model
system: str = ""  # optional system prompt (empty: none)
do_sample: bool = False  # False: greedy (the same answer every run) | True: sampled
cache_dir: str = ""  # exports and compiled NPU blobs (empty: the phi3kit default cache folder)
"""),
md("doctor-md", """
## 1. Check the machine

`kit.doctor()` lists the CPU's instruction sets, the memory an export needs, the devices OpenVINO sees
(with the NPU's driver and compiler versions), whether the seed's library imports here, and a route to
start with. The same table is `phi3kit doctor` in a terminal.
"""),
code("doctor", """
import phi3kit as kit

report = kit.doctor()
report
"""),
md("recommend-md", """
The recommendation is a plain function of those facts: an NPU present, then OpenVINO GenAI on the NPU
with channel-wise int4 weights; an Intel GPU, then the GPU; an NVIDIA GPU, then ONNX Runtime GenAI on
CUDA; otherwise the CPU. It names the ready-made folder for that route when one is published.
"""),
code("recommend", """
print(report.recommendation.why)
print(report.recommendation.call)
"""),
md("route-md", """
## 2. Choose the route

**Route 1** uses the *NPU preset*. The NPU compiles the model for fixed shapes and wants symmetric 4-bit
weights, so the model is `--weight-format int4 --sym --ratio 1.0 --group-size -1`:

* `--sym`: weights centred on zero (no zero point), which the NPU requires;
* `--ratio 1.0`: every layer in int4 (the seed's `0.6` keeps 40% in int8, which the NPU does not want);
* `--group-size -1`: one scale per output channel (*channel-wise*), the fastest on the NPU. The kit
  calls this precision `int4-cw`. OpenVINO suggests group size 128 for models up to about 4B parameters
  when accuracy matters more (`group_size = 128`: an export).

On the NPU the preset also sets the pipeline's shapes: prompts up to `MAX_PROMPT_LEN` tokens, and a
context of `MAX_PROMPT_LEN + MIN_RESPONSE_LEN`; `CACHE_DIR` keeps the compiled blob so the next load is
fast. The kit's chat keeps to both limits. On the CPU those options are left out (the CPU plugin
rejects them); the model stays the same.

**Route 2** hands the Hugging Face checkpoint to the library, which quantizes and compiles it while
loading (section 6 shows its code).
"""),
code("route", """
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
*canary_cells('routes=[config.backend], runtimes=["genai", "npu-library"]'),
md("get-md", """
## 3. Get the model

For `phi-3-mini-4k`, route 1 takes OpenVINO's ready-made channel-wise folder
(`OpenVINO/Phi-3-mini-4k-instruct-int4-cw-ov`: exactly the preset's format, no conversion); with
`group_size = 128` or `prefer = "export"` it runs `optimum-cli export openvino` with the preset's
settings instead, and caches the result. Route 2 has nothing to export.
"""),
code("get", """
export = kit.export(**config.to_dict())
print(export.route, "|", "reused" if export.cached else "built", "|", export.recipe)
"""),
md("load-md", """
## 4. Load

Loading compiles the model for the device. On the NPU the first compile of Phi-3-mini takes a while; with
`CACHE_DIR` set, later loads read the compiled blob instead. If the NPU driver is too old, this is where
the kit says so, with the driver version it found and where to update it.
"""),
code("load", """
session = kit.load(**config.to_dict())
print(session, f"loaded in {session.load_s:.2f} s")
print("limits:", session.limits.why)
"""),
md("answer-md", """
## 5. Stream an answer

The prompt is wrapped in Phi-3's chat template, and the answer arrives token by token until the model's
end-of-turn token `<|end|>`. The answer stored in this file comes from the pocket model with the test
values (`model = "pocket"`, `device = "CPU"`).
"""),
answer_cell(),
md("metrics-md", """
**TTFT** is the prefill (compute-bound); **tokens/s** is the decode (memory-bound). On the NPU the prompt
is padded to its compiled shape, so TTFT barely changes with the prompt's length.
"""),
code("metrics", """
response.metrics
"""),
code("plot", """
response.metrics.plot(title=f"{config.backend} on {config.device}");
"""),
md("library-md", """
## 6. The same with the libraries alone

### OpenVINO GenAI on the NPU

The preset is a handful of `LLMPipeline` properties, written out here. They exist only on the NPU: the
CPU and GPU plugins reject `MAX_PROMPT_LEN`, `MIN_RESPONSE_LEN` and `GENERATE_HINT`, so on another
device the pipeline gets none of them (which is what happens when this notebook is tested on a CPU).
"""),
code("genai", """
if route == "openvino-genai":  # the seed library's Windows environment has no openvino_genai
    import openvino_genai as ov_genai

    properties = {"MAX_PROMPT_LEN": max_prompt_len, "MIN_RESPONSE_LEN": min_response_len,
                  "GENERATE_HINT": generate_hint,
                  "CACHE_DIR": str(kit.backends.get("openvino").npu_blob_dir(cache_dir or None))}
    if device.split(".")[0] != "NPU":
        properties = {}  # NPU-only options
    assert properties == session.config.runtime_config  # exactly what the preset passed
    pipe = ov_genai.LLMPipeline(str(export.path), device, **properties)
    config_genai = pipe.get_generation_config()
    config_genai.max_new_tokens = max_new_tokens
    config_genai.do_sample = False
    library_answer = pipe.generate(prompt, config_genai)
    print(library_answer)
"""),
code("genai-check", """
if route == "openvino-genai":
    # an answer cut at max_new_tokens may end inside a character: the library shows it as �, the kit holds it back
    library_text = str(library_answer).strip().removesuffix("\\ufffd")
    assert library_text == session.generate(prompt, max_new_tokens=max_new_tokens).text.strip()
    print("LLMPipeline's greedy answer is the kit's")
"""),
md("npu-library-md", """
### The seed's library: `intel-npu-acceleration-library`

The seed tutorial loads the checkpoint with the library's own class: `NPUModelForCausalLM` quantizes it to
the `CompilerConfig`'s dtype while loading (its own int4, not OpenVINO's: the answers differ) and runs
transformers' `generate` on the NPU. The library installs only on Windows, in its own environment
(`requirements/npu.txt`), so elsewhere this cell says so and skips. And one limit to know: compiling a
second int4 or int8 model in one process aborts that process, so the cell does not run after route 2
loaded one in this kernel (restart it with `route = "openvino-genai"` to run the cell).
"""),
code("npu-library", """
import importlib.util

if importlib.util.find_spec("intel_npu_acceleration_library") is None:
    print("intel-npu-acceleration-library does not import here: it is Windows-only and archived (see above)")
elif route == "npu-library" and precision in ("int4", "int8"):
    print("this process already compiled an int4/int8 model with the library; a second one would abort it")
else:
    import intel_npu_acceleration_library as npu_lib
    from intel_npu_acceleration_library.compiler import CompilerConfig
    from transformers import AutoTokenizer

    checkpoint = kit.checkpoint(model)
    npu_model = npu_lib.NPUModelForCausalLM.from_pretrained(
        checkpoint, use_cache=True, config=CompilerConfig(dtype=npu_lib.int4), attn_implementation="sdpa",
        export=False)  # no pickle under ./cache/models: the next run's torch.load would refuse it
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = npu_model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
"""),
md("next", """
## Next

* Re-run with `device = "CPU"` (and `"GPU"`) and compare tokens/s and TTFT with the NPU's.
* Try `group_size = 128` (group-wise int4, an export) or `precision = "fp16"` and compare answers.
* Run the seed's route with `route = "npu-library"`, in its own Windows environment.
"""),
]
