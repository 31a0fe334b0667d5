# fgbench: learn fine-grained embeddings, evaluate them under one protocol, report.
# Rules are thin: each calls `fgbench <stage>`; the logic lives in pkg/fgbench.
from snakemake.utils import min_version

min_version("9.0")


# The default experiment; a file given with --configfile (e.g. workflow/experiments/*.yaml)
# replaces it rather than merging into it, so the default matrix does not leak into experiments.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        rules.aggregate.output,
        rules.tables.output,
        rules.recipes.output,
        rules.compare.output,
        rules.figures.output,
        LATEX_TABLES,
        PLOTS,
        TSNE_PLOTS,
        CURVE_PLOTS,
