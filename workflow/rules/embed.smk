# Embeddings of one split (test: plus the augmented views used by the few-shot supports).
rule embed:
    input:
        model=rules.train.output.model,
        data=rules.prepare.output.data,
    output:
        embeddings=f"results/embeddings/{RUN_DIR}/{{split}}.npz",
    params:
        spec=embed_spec,
    wildcard_constraints:
        split="train|val|test",
        method=TRAINED_PATTERN,
    log:
        f"results/logs/embed/{RUN_DIR}/{{split}}.log",
    benchmark:
        f"results/benchmarks/embed/{RUN_DIR}/{{split}}.tsv"
    threads: rule_threads("embed")
    resources:
        **rule_resources("embed", gpu=0),
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench embed --spec {params.spec:q} --model {input.model} --data {input.data} "
        "--split {wildcards.split} --gpus {resources.gpu} --out {output.embeddings} > {log} 2>&1"
