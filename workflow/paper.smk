# Every paper setting of workflow/experiments/ in one DAG: the full reproduction.
#   snakemake -s workflow/paper.smk --configfile my_paths.yaml --cores 16 --resources gpu=4
#   snakemake -s workflow/paper.smk --configfile my_paths.yaml --profile workflow/profiles/slurm
# Config (all optional):
#   experiments: [vmf_mnist, ...]      which files of workflow/experiments/ (default: all of them)
#   datasets: {cub200: {root: ...}}    merged into every experiment that uses the dataset (your paths)
# Each experiment is the root Snakefile imported as a module with its own config; its outputs go
# to results/<experiment>/ (not results/), so two experiments that train the same method on the
# same dataset differently (e.g. 128-d and 512-d embeddings) never overwrite each other.
from pathlib import Path

import yaml

from fgbench.config import merge_dataset_overrides
from fgbench.errors import FgbenchError, exit_on_config_error

EXPERIMENT_DIR = Path(workflow.basedir) / "experiments"
KNOWN = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))
EXPERIMENTS = config.get("experiments") or KNOWN
for name in set(EXPERIMENTS) - set(KNOWN):
    exit_on_config_error(f"config key 'experiments' names '{name}'; valid: {', '.join(KNOWN)}")
CONFIGS = {name: yaml.safe_load((EXPERIMENT_DIR / f"{name}.yaml").read_text()) for name in EXPERIMENTS}
try:
    CONFIGS = merge_dataset_overrides(CONFIGS, config.get("datasets"))
except FgbenchError as e:
    exit_on_config_error(e)


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


rule all:
    default_target: True
    input:
        [getattr(rules, f"{name}_all").input for name in EXPERIMENTS],
