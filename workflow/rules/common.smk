# Config validation, the benchmark matrix, and the per-job specs handed to `fgbench`.
import json
import sys

from snakemake.utils import validate

from fgbench import config as fgconfig
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
    for p in PROTOCOLS
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
