# Tables across seeds, the papers' tables, one plot per protocol, t-SNE maps, training curves;
# `snakemake --report` collects them (the papers' tables are drawn on its start page by
# workflow/report/workflow.rst). All but t-SNE are cheap: `localrule: True` keeps them off a
# cluster (per rule rather than a `localrules:` list, which workflow/paper.smk's prefixed
# module rules would not match).
# Every run's training curves (a few KB of CSV each: cheap, so they stay local on a cluster).
CURVE_PLOTS = [f"results/plots/curves/{d}/{s}/{m}/seed{seed}.png" for d, s, m, seed in RUNS]


rule aggregate:
    localrule: True
    input:
        ALL_METRICS,
    output:
        csv=report(
            "results/tables/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        markdown=report(
            "results/tables/summary.md",
            caption="../report/summary.rst",
            category="Tables",
        ),
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench aggregate --csv {output.csv} --markdown {output.markdown} {input} > {log} 2>&1"


# The papers' tables: coarse-to-fine few-shot, retrieval, closed-set accuracy and calibration.
rule tables:
    localrule: True
    input:
        summary=rules.aggregate.output.csv,
    output:
        [
            report(
                f"results/tables/{kind}.{ext}",
                caption=f"../report/{kind}.rst",
                category="Tables",
            )
            for kind in PAPER_TABLES
            for ext in ("md", "csv")
        ],
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        "results/logs/tables.log",
    benchmark:
        "results/benchmarks/tables.tsv"
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench tables --summary {input.summary} --out-dir {params.out_dir} > {log} 2>&1"


rule plot:
    localrule: True
    input:
        summary=rules.aggregate.output.csv,
    output:
        png=report(
            "results/plots/{protocol}.png",
            caption="../report/plot.rst",
            category="Plots",
            labels={"protocol": "{protocol}"},
        ),
    log:
        "results/logs/plot/{protocol}.log",
    benchmark:
        "results/benchmarks/plot/{protocol}.tsv"
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench report --summary {input.summary} --protocol {wildcards.protocol} --out {output.png} > {log} 2>&1"


# t-SNE of one run's test embeddings (its first layer), coloured by coarse and by fine label.
rule tsne:
    input:
        embeddings=f"results/embeddings/{RUN_DIR}/test.npz",
    output:
        png=report(
            f"results/plots/tsne/{RUN_DIR}.png",
            caption="../report/tsne.rst",
            category="t-SNE",
            labels={"dataset": "{dataset}", "setting": "{setting}", "method": "{method}", "seed": "{seed}"},
        ),
    params:
        points=CFG["report"]["tsne_points"],
        name=lambda wildcards: f"{wildcards.method}, {wildcards.dataset} {wildcards.setting}, seed {wildcards.seed}",
    log:
        f"results/logs/tsne/{RUN_DIR}.log",
    benchmark:
        f"results/benchmarks/tsne/{RUN_DIR}.tsv"
    threads: rule_threads("tsne")
    resources:
        **rule_resources("tsne"),
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench tsne --embeddings {input.embeddings} --points {params.points} --name {params.name:q} "
        "--out {output.png} > {log} 2>&1"


# Loss terms, validation Recall@1 and learning rate of one run against epoch; the selected
# (best validation) epoch, read from the run's config.yaml, is marked.
rule curves:
    localrule: True
    input:
        log_csv=rules.train.output.log_csv,
        config=rules.train.output.config,
    output:
        png=report(
            f"results/plots/curves/{RUN_DIR}.png",
            caption="../report/curves.rst",
            category="Training curves",
            labels={"dataset": "{dataset}", "setting": "{setting}", "method": "{method}", "seed": "{seed}"},
        ),
    params:
        name=lambda wildcards: f"{wildcards.method}, {wildcards.dataset} {wildcards.setting}, seed {wildcards.seed}",
    log:
        f"results/logs/curves/{RUN_DIR}.log",
    benchmark:
        f"results/benchmarks/curves/{RUN_DIR}.tsv"
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench curves --log {input.log_csv} --config {input.config} --name {params.name:q} "
        "--out {output.png} > {log} 2>&1"


# The recipe card: every method's resolved hyperparameters (fgbench.report.recipes), rendered
# from this config, so it reruns when the config changes (params are a rerun trigger). Under
# workflow/paper.smk, results/<experiment>/tables/: the experiment names the card.
rule recipes:
    localrule: True
    output:
        csv=report(
            "results/tables/recipes.csv",
            caption="../report/recipes.rst",
            category="Recipes",
        ),
        markdown="results/tables/recipes.md",
    params:
        config=json.dumps(config),
        name=lambda wildcards, output: "/".join(Path(output.csv).parts[1:-2]),
    log:
        "results/logs/recipes.log",
    benchmark:
        "results/benchmarks/recipes.tsv"
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench recipes --config {params.config:q} --name={params.name:q} --csv {output.csv} "
        "--markdown {output.markdown} > {log} 2>&1"
