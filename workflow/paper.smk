# Every paper setting of workflow/experiments/ in one DAG: the full reproduction.
#   snakemake -s workflow/paper.smk --configfile my_paths.yaml --cores 16 --resources gpu=4
#   snakemake -s workflow/paper.smk --configfile my_paths.yaml --profile workflow/profiles/slurm
# Config (all optional):
#   experiments: [vmf_mnist, ...]      which files of workflow/experiments/ (default: all of them)
#   datasets: {cub200: {root: ...}}    merged into every experiment that uses the dataset (your paths)
# Each experiment is the root Snakefile imported as a module with its own config; its outputs go
# to results/<experiment>/ (not results/), so two experiments that train the same method on the
# same dataset differently (e.g. 128-d and 512-d embeddings) never overwrite each other.
import sys
from pathlib import Path

import yaml

from fgbench.config import merge_dataset_overrides
from fgbench.errors import FgbenchError
from fgbench.report.ledger import load_ledger

EXPERIMENT_DIR = Path(workflow.basedir) / "experiments"
KNOWN = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))
EXPERIMENTS = config.get("experiments") or KNOWN
for name in set(EXPERIMENTS) - set(KNOWN):
    sys.exit(f"fgbench: config error: config key 'experiments' names '{name}'; valid: {', '.join(KNOWN)}")
CONFIGS = {name: yaml.safe_load((EXPERIMENT_DIR / f"{name}.yaml").read_text()) for name in EXPERIMENTS}
try:
    CONFIGS = merge_dataset_overrides(CONFIGS, config.get("datasets"))
except FgbenchError as e:
    sys.exit(f"fgbench: config error: {e}")


for experiment in EXPERIMENTS:
    # `use rule * from experiment as rule_prefix*`: Snakemake resolves both names from these
    # module-level variables (dynamic modules), so every experiment's rules get its own prefix.
    rule_prefix = f"{experiment}_"

    module:
        name:
            experiment
        snakefile:
            "../Snakefile"
        config:
            CONFIGS[experiment]
        replace_prefix:
            {"results/": f"results/{experiment}/"}

    use rule * from experiment as rule_prefix*


report: "report/workflow.rst"

# The reproduction ledger (workflow/ledger.yaml, beside experiments/ so it is not loaded as
# one): every published number beside the value of the run that targets it, from the summaries
# of the chosen experiments; entries of the others say "not run".
LEDGER = Path(workflow.basedir) / "ledger.yaml"
try:
    LEDGER_EXPERIMENTS = sorted({row["experiment"] for row in load_ledger(LEDGER)} & set(EXPERIMENTS))
except FgbenchError as e:
    sys.exit(f"fgbench: config error: {e}")


rule ledger:
    localrule: True
    input:
        ledger=LEDGER,
        summaries=[f"results/{name}/tables/summary.csv" for name in LEDGER_EXPERIMENTS],
    output:
        csv=report("results/tables/ledger.csv", caption="report/ledger.rst", category="Reproduction ledger"),
        markdown=report("results/tables/ledger.md", caption="report/ledger.rst", category="Reproduction ledger"),
    params:
        summaries=" ".join(f"{name}=results/{name}/tables/summary.csv" for name in LEDGER_EXPERIMENTS),
    log:
        "results/logs/ledger.log",
    benchmark:
        "results/benchmarks/ledger.tsv"
    conda:
        "../envs/fgbench.yaml"
    shell:
        "fgbench ledger --ledger {input.ledger} --summary {params.summaries} --csv {output.csv} "
        "--markdown {output.markdown} > {log} 2>&1"


rule all:
    default_target: True
    input:
        [getattr(rules, f"{name}_all").input for name in EXPERIMENTS],
        rules.ledger.output,
