# Read a dataset's official files; write images, labels and the validation split.
rule prepare:
    output:
        data="results/data/{dataset}/data.npz",
    params:
        spec=prepare_spec,
    log:
        "results/logs/prepare/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare/{dataset}.tsv"
    threads: 1
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench prepare --spec {params.spec:q} --out {output.data} > {log} 2>&1"
