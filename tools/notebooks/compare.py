"""English source of notebooks/compare.ipynb (build: `python tools/notebooks/build.py`)."""

from nb import code, md, parameters

TITLE = "Compare Phi-3 routes"
CELLS = [
md("intro", """
# Compare the routes: speed, memory and quality side by side

The other notebooks run Phi-3 one way at a time. This one runs **the same prompts through several
routes** (PyTorch, OpenVINO, ONNX Runtime GenAI, at several precisions) on this machine and puts
the numbers next to each other:

* **time to first token** (TTFT): reading the prompt, for prompts of different lengths;
* **decode speed** in tokens per second, and the latency of every single token;
* **memory**: the peak resident memory of each route's process, and the weights on disk;
* **quality**: perplexity on a fixed text and how often the greedy answer matches PyTorch's.

A route is written `backend:precision`, optionally `backend/runtime:precision@device`,
for example `openvino:int4`, `openvino/optimum:int8` or `ortgenai:int4@CPU`.
"""),
md("params-intro", """
## Parameters

Defaults compare the real Phi-3-mini. PyTorch fp32 holds the whole model in 32-bit floats
(about 15 GB, more while loading); the kit skips it, saying why, when the RAM is not there.
`model = "pocket"` runs everything in seconds, offline.
"""),
parameters("parameters", """
model: str = "phi-3-mini-4k"  # catalog alias (`phi3kit models`), hub id, folder, or "pocket" (offline)
routes: str = "transformers:fp32,openvino:int4,openvino:int8,ortgenai:int4"  # comma separated backend:precision
prompt_lengths: str = "128,512"  # prompt sizes to time, in tokens, comma separated
max_new_tokens: int = 64  # tokens generated per timed run (always this many: end tokens do not stop it)
runs: int = 3  # timed runs per prompt length, after one warm-up run that is not counted
isolate: bool = True  # True: each route in a process of its own (its memory returned after) | False: all in this kernel (quicker to start)
cache_dir: str = ""  # folder for exports; empty for the kit default (PHI3KIT_CACHE or the user cache)
results_dir: str = "results"  # where the CSV and JSON of the results go; empty to keep them in memory only
"""),
md("machine-md", """
## 1. The machine

Every number below belongs to this hardware. Decoding reads all the weights once per token, so
memory bandwidth sets the pace more than the CPU's clock; prompt reading is arithmetic, where
cores and instruction sets (AVX-512, AMX) matter.
"""),
code("machine", """
import phi3kit as kit

machine = kit.doctor()
for item in ("CPU", "ISA", "cores", "RAM", "OS"):
    print(f"{item:6} {machine.get(item)}")
"""),
md("routes-md", """
## 2. Which routes run here?

Each backend says which devices it sees and whether its packages are installed. A route that
cannot run is skipped with the reason, instead of failing halfway through the comparison.
"""),
code("routes", """
# NBVAL_CHECK_OUTPUT
for route, problem in kit.bench.available(routes):
    print(f"{route.label:28} {'runs here' if problem is None else 'skipped: ' + problem}")
"""),
md("measure-md", """
## 3. Measure

`kit.bench.run` does for each route what OpenVINO's `llm_bench` and ONNX Runtime GenAI's
`benchmark_e2e` do:

* it exports the model (cached after the first time) and loads it, timing both;
* it runs one **warm-up** generation that is not counted: the first run compiles kernels;
* every timed run gets a **fresh prompt** of exactly the requested length, cut from a fixed text
  at a new place: OpenVINO GenAI caches prompts it has seen, which would fake the TTFT;
* it generates **exactly `max_new_tokens`** greedy tokens, so no route wins by stopping early;
* each route runs **in its own process**, so its memory is its own and is returned afterwards.

This takes a while for the real model (each export takes minutes the first time).
"""),
code("measure", """
report = kit.bench.run(model, routes, prompt_lengths, max_new_tokens, runs, isolate=isolate, cache_dir=cache_dir or None)
report
"""),
md("side-md", """
## 4. Side by side

* **TTFT** grows with the prompt: the whole prompt is processed before the first token.
* **Decode speed** mostly follows the bytes of weights read per token: int4 reads about half of
  int8 and a quarter of fp16, which is why compressing weights makes the model faster, not only smaller.
* **Memory**: the peak includes the runtime itself and the key/value cache, not just the weights.
* **Per-token latency** should be flat after the first token; spikes are other programs
  competing for the CPU.
"""),
code("plot", """
report.plot();
"""),
md("quality-md", """
## 5. What does the speed cost?

* **Perplexity**: how surprised the model is by a fixed text (the pocket model: its own answers).
  Lower is better; compare each route with PyTorch fp32, not with other models.
* **Agreement**: the share of greedy tokens identical to PyTorch fp32's on the same prompts, and
  **prefix match**: how many tokens in a row match before the first difference.

Integer weights round every value, so int4 usually drifts first; fp32 routes should agree fully.
"""),
code("quality", """
report.quality()
"""),
md("tune-md", """
## 6. Tune the runtime for this laptop

A runtime's defaults are chosen for every machine at once. On CPUs that compute bf16 natively (AMX,
AVX-512 BF16) OpenVINO picks bf16, the slow path for one-token decode; on others, the size of the
groups it quantizes activations in matters. `kit.tune` times a few of the runtime's documented
settings on **this** machine, the default first and last, each in its own compiled pipeline, and
keeps one only if it beats the default by more than the noise (the whole 95% interval of its time
ratio below 1). Settings that change the arithmetic change greedy answers a little too: the table
shows each one's agreement with the default beside its speed. `save=False` here: this cell only
shows the comparison; `phi3kit tune` (or `save=True`) keeps the choice for later loads.
"""),
code("tune", """
tune_session = kit.load(model, "openvino", "int4", cache_dir=cache_dir or None)
tuning = kit.tune(tune_session, runs=max(runs, 2), prompt_tokens=max(int(prompt_lengths.split(",")[0]), 32),
                  new_tokens=max_new_tokens, save=False)
tuning
"""),
md("keep-md", """
## 7. Keep the numbers

The table as CSV (one row per route and prompt length) and everything as JSON, per-token
latencies included, so results from different laptops in the room can be compared later.
"""),
code("keep", """
if results_dir:
    csv_path, json_path = report.save(results_dir, stem="compare")  # never overwrites: compare-1.csv...
    print(csv_path, json_path, sep="\\n")
"""),
md("next", """
## Next

* Run `phi3kit bench --model pocket --routes openvino:int4,openvino:fp16` in a terminal: the same
  measurement with a table, a CSV and a JSON file.
* `phi3kit run notebooks/openvino.ipynb -g precision int4,int8 --jobs 2` runs a notebook over a
  parameter grid and collects each run's metrics into one table.
* `docs/benchmarks.md` has the full-size Phi-3-mini numbers measured on a 2-core CPU.
"""),
]
