# Config validation, the benchmark matrix, and the per-job specs handed to `fgbench`.
import json
import re
import sys

from snakemake.utils import validate

from fgbench import config as fgconfig
from fgbench.evaluate.combine import combination_cells
from fgbench.errors import FgbenchError

# fgbench's checks first: one line naming the key to fix; then the schema as a backstop.
try:
    CFG = fgconfig.validate(config)
except FgbenchError as e:
    sys.exit(f"fgbench: config error: {e}")
validate(config, schema="../schemas/config.schema.yaml")

RUNS = fgconfig.runs(CFG)
PROTOCOLS = list(CFG["protocols"])
RUN_DIR = "{dataset}/{setting}/{method}/seed{seed}"
METRICS = [
    f"results/metrics/{d}/{s}/{m}/seed{seed}/{p}.json"
    for d, s, m, seed in RUNS
    for p in fgconfig.protocols_for(CFG, s, m)
]
PLOTS = expand("results/plots/{protocol}.png", protocol=PROTOCOLS)


wildcard_constraints:
    dataset="|".join(CFG["datasets"]),
    setting="[^/]+",
    method="[^/]+",
    seed=r"\d+",
    protocol="|".join(PROTOCOLS),


def threads_for(rule):
    return CFG.get("resources", {}).get(rule, {}).get("threads", 1)


def prepare_spec(wildcards):
    return json.dumps(fgconfig.prepare_spec(CFG, wildcards.dataset))


def train_spec(wildcards):
    spec = fgconfig.train_spec(CFG, wildcards.dataset, wildcards.setting, wildcards.method, int(wildcards.seed))
    return json.dumps(spec)


def embed_spec(wildcards):
    return json.dumps(fgconfig.embed_spec(CFG, wildcards.dataset))


def protocol_spec(wildcards):
    return json.dumps(fgconfig.protocol_spec(CFG, wildcards.protocol))


def run_info(wildcards):
    spec = fgconfig.train_spec(CFG, wildcards.dataset, wildcards.setting, wildcards.method, int(wildcards.seed))
    info = {k: wildcards[k] for k in ("dataset", "setting", "method")}
    return json.dumps({**info, "seed": int(wildcards.seed), "config_hash": fgconfig.spec_hash(spec)})


# --- Combinations of two models, t-SNE plots, the coarse-to-fine table ------------------------


def alternatives(names):
    """A wildcard regex matching exactly these names (no names: a regex that matches nothing)."""
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!)"


# Rule evaluate makes results/metrics/{...}/{method}/..., rule combine the same path with a
# combination's name; the method and combination patterns keep the two rules apart (a
# combination may not be named like a method: fgbench.evaluate.combine.validate_combinations).
PAPER_TABLES = ("coarse_to_fine", "retrieval", "closed_set")  # fgbench.report.tables.TABLES
COMBINATIONS = {c["name"]: c for c in CFG["combinations"]}
FEWSHOT_PROTOCOLS = [p for p in PROTOCOLS if CFG["protocols"][p]["kind"] == "fewshot"]
METHOD_PATTERN = alternatives({method for _, _, method, _ in RUNS})
COMBINATION_PATTERN = alternatives(COMBINATIONS)
FEWSHOT_PATTERN = alternatives(FEWSHOT_PROTOCOLS)
COMBINED_METRICS = [
    f"results/metrics/{d}/{s}/{name}/seed{seed}/{p}.json"
    for d, s, name, seed in combination_cells(COMBINATIONS.values(), RUNS)
    for p in FEWSHOT_PROTOCOLS
]
ALL_METRICS = METRICS + COMBINED_METRICS
# t-SNE maps of the coarse-to-fine runs: coloured by coarse and by fine label.
TSNE_PLOTS = [
    f"results/plots/tsne/{d}/{s}/{m}/seed{seed}.png"
    for d, s, m, seed in RUNS
    if CFG["report"]["tsne"] and s == "coarse_to_fine"
]


def combination_embeddings(wildcards):
    """The test embeddings of a combination's models A and B in this dataset, setting and seed."""
    w = wildcards
    models = COMBINATIONS[w.combination]["models"]
    return {
        key: f"results/embeddings/{w.dataset}/{w.setting}/{m['method']}/seed{w.seed}/test.npz"
        for key, m in zip("ab", models)
    }


def combine_spec(wildcards):
    protocol = fgconfig.protocol_spec(CFG, wildcards.protocol)
    return json.dumps({"combination": COMBINATIONS[wildcards.combination], "protocol": protocol})


def combine_run_info(wildcards):
    comb = COMBINATIONS[wildcards.combination]
    seed = int(wildcards.seed)
    specs = [fgconfig.train_spec(CFG, wildcards.dataset, wildcards.setting, m["method"], seed) for m in comb["models"]]
    info = {"dataset": wildcards.dataset, "setting": wildcards.setting, "method": wildcards.combination, "seed": seed}
    return json.dumps({**info, "config_hash": fgconfig.spec_hash({"models": specs, "combination": comb})})
