# Tables across seeds, one plot per protocol; `snakemake --report` collects them.
localrules:
    aggregate,
    plot,


rule aggregate:
    input:
        METRICS,
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
