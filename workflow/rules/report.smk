# Tables across seeds, the papers' coarse-to-fine table, one plot per protocol, t-SNE maps;
# `snakemake --report` collects them.
localrules:
    aggregate,
    tables,
    plot,


rule aggregate:
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
    threads: 1
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench tsne --embeddings {input.embeddings} --points {params.points} --name {params.name:q} "
        "--out {output.png} > {log} 2>&1"
