# Config validation, the benchmark matrix, and the per-job specs handed to `fgbench`.
import functools
import json
import os
import re
from pathlib import Path

from snakemake.utils import validate

from fgbench import config as fgconfig
from fgbench.evaluate.combine import combination_cells
from fgbench.report.options import expected_latex
from fgbench.errors import FgbenchError, exit_on_config_error

# fgbench's checks first: one line naming the key to fix; then the schema as a backstop.
try:
    CFG = fgconfig.validate(config)
except FgbenchError as e:
    exit_on_config_error(e)
# The schema sees what fgbench validated: nested --config values read as numbers (seeds=[0,1,2]).
validate(fgconfig.from_command_line(config), schema="../schemas/config.schema.yaml")

# For envs/fgbench.post-deploy.sh: where fgbench lives, to install it into a conda env (--sdm conda).
# Set here, never read from the user's environment (so no `envvars:` entry).
os.environ.update(FGBENCH_ROOT=str(Path(workflow.current_basedir).parents[1]))

RUNS = fgconfig.runs(CFG)
# External models (config 'models'): embedded by rule embed_model, evaluated like the runs.
MODELS = CFG["models"]
MODEL_RUNS = fgconfig.model_runs(CFG)
PROTOCOLS = list(CFG["protocols"])
RUN_DIR = "{dataset}/{setting}/{method}/seed{seed}"
METRICS = [
    f"results/metrics/{d}/{s}/{m}/seed{seed}/{p}.json"
    for d, s, m, seed in RUNS + MODEL_RUNS
    for p in fgconfig.protocols_for(CFG, s, m)
]
PLOTS = expand("results/plots/{protocol}{kind}.png", protocol=PROTOCOLS, kind=("", "_differences"))


wildcard_constraints:
    dataset="|".join(CFG["datasets"]),
    setting="[^/]+",
    method="[^/]+",
    seed=r"\d+",
    protocol="|".join(PROTOCOLS),


# --- Resources: config 'resources' per rule, overridden per dataset ('datasets.<name>.resources') ---


# A retried job (the SLURM profile's `retries`) gets attempt x this memory and time: the usual
# reasons a cluster job fails are running out of them.
SCALED_BY_ATTEMPT = ("mem_mb", "runtime")


def per_job(rule, key, default, by_dataset):
    """One resource of ``rule``'s jobs: a plain value when every dataset agrees, else a function of
    the dataset wildcard (Snakemake calls such functions once per job, which a large DAG feels)."""
    datasets = CFG["datasets"] if by_dataset else [None]
    values = {d: fgconfig.job_resources(CFG, rule, d).get(key, default) for d in datasets}
    if len(set(values.values())) <= 1:
        value = next(iter(values.values()), default)
        if key in SCALED_BY_ATTEMPT and value is not None:
            return lambda wildcards, attempt: value * attempt
        return value
    if key in SCALED_BY_ATTEMPT:
        return lambda wildcards, attempt: None if values[wildcards.dataset] is None else values[wildcards.dataset] * attempt
    return lambda wildcards: values[wildcards.dataset]


def rule_threads(rule, by_dataset=True):
    return per_job(rule, "threads", 1, by_dataset)


def rule_resources(rule, by_dataset=True, **defaults):
    """Snakemake resources of ``rule`` from the config (gpu, mem_mb, runtime, cpus_per_task);
    ``defaults`` are resources the rule's command reads, so they always exist (gpu=0)."""
    keys = {k for d in [None, *CFG["datasets"]] for k in fgconfig.job_resources(CFG, rule, d)} | set(defaults)
    keys.discard("threads")
    return {k: per_job(rule, k, defaults.get(k), by_dataset) for k in sorted(keys)}


def prepare_spec(wildcards):
    return json.dumps(fgconfig.prepare_spec(CFG, wildcards.dataset))


@functools.cache
def run_spec(dataset, setting, method, seed):
    """(the train spec as JSON, its hash) of one run; cached: train, embed and every evaluate job
    of the run ask for it, and large DAGs (workflow/paper.smk) feel the cost."""
    spec = fgconfig.train_spec(CFG, dataset, setting, method, int(seed))
    return json.dumps(spec), fgconfig.spec_hash(spec)


def train_spec(wildcards):
    return run_spec(wildcards.dataset, wildcards.setting, wildcards.method, wildcards.seed)[0]


def embed_spec(wildcards):
    return json.dumps(fgconfig.embed_spec(CFG, wildcards.dataset))


def protocol_spec(wildcards):
    """The protocol's parameters for this run's method (retrieval uses the method's metric)."""
    return json.dumps(fgconfig.protocol_spec(CFG, wildcards.protocol, wildcards.method))


@functools.cache
def model_spec(dataset, setting, model):
    """(an external model's embed spec as JSON, its hash) on one dataset and setting."""
    spec = fgconfig.model_spec(CFG, dataset, setting, model)
    return json.dumps(spec), fgconfig.spec_hash(spec)


def first_seed_embeddings(wildcards):
    """[the first seed's embeddings] of a model, for its other seeds to copy; [] for the first."""
    first = str(CFG["seeds"][0])
    if wildcards.seed == first:
        return []
    return [f"results/embeddings/{wildcards.dataset}/{wildcards.setting}/{wildcards.model}/seed{first}/test.npz"]


def model_files(model, dataset, setting):
    """The files a model's embeddings are made from (weights, checkpoint, embeddings file): a
    newer file reruns its embedding."""
    spec = json.loads(model_spec(dataset, setting, model)[0])
    return [spec[k] for k in ("weights_file", "checkpoint", "path") if spec.get(k)]


def run_info(wildcards):
    if wildcards.method in MODELS:
        digest = model_spec(wildcards.dataset, wildcards.setting, wildcards.method)[1]
    else:
        digest = run_spec(wildcards.dataset, wildcards.setting, wildcards.method, wildcards.seed)[1]
    info = {k: wildcards[k] for k in ("dataset", "setting", "method")}
    return json.dumps({**info, "seed": int(wildcards.seed), "config_hash": digest})


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
TRAINED_PATTERN = alternatives({method for _, _, method, _ in RUNS})
MODEL_PATTERN = alternatives(MODELS)
METHOD_PATTERN = alternatives({method for _, _, method, _ in RUNS} | set(MODELS))  # evaluated: both
COMBINATION_PATTERN = alternatives(COMBINATIONS)
FEWSHOT_PATTERN = alternatives(FEWSHOT_PROTOCOLS)
COMBINED_METRICS = [
    f"results/metrics/{d}/{s}/{name}/seed{seed}/{p}.json"
    for d, s, name, seed in combination_cells(COMBINATIONS.values(), RUNS + MODEL_RUNS)
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


def member_spec(dataset, setting, name, seed):
    """A combination member's spec: a method's train spec, or a model's (config 'models')."""
    if name in CFG["models"]:
        return fgconfig.model_spec(CFG, dataset, setting, name)
    return fgconfig.train_spec(CFG, dataset, setting, name, seed)


def combine_run_info(wildcards):
    comb = COMBINATIONS[wildcards.combination]
    seed = int(wildcards.seed)
    specs = [member_spec(wildcards.dataset, wildcards.setting, m["method"], seed) for m in comb["models"]]
    info = {"dataset": wildcards.dataset, "setting": wildcards.setting, "method": wildcards.combination, "seed": seed}
    return json.dumps({**info, "config_hash": fgconfig.spec_hash({"models": specs, "combination": comb})})
