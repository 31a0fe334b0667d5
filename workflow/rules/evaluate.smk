# One protocol on one run's test embeddings (every embedded layer) -> tidy metric rows, and the
# per-episode / per-query values beside them (units=; fgbench.evaluate.units). With
# resources.evaluate.gpu the few-shot solver runs on a claimed GPU (as embed does).
rule evaluate:
    input:
        embeddings=f"results/embeddings/{RUN_DIR}/test.npz",
    output:
        metrics=f"results/metrics/{RUN_DIR}/{{protocol}}.json",
        units=f"results/metrics/{RUN_DIR}/{{protocol}}.npz",
    params:
        spec=protocol_spec,
        run=run_info,
    wildcard_constraints:
        method=METHOD_PATTERN,
    log:
        f"results/logs/evaluate/{RUN_DIR}/{{protocol}}.log",
    benchmark:
        f"results/benchmarks/evaluate/{RUN_DIR}/{{protocol}}.tsv"
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate", gpu=0),
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench evaluate --spec {params.spec:q} --run {params.run:q} "
        "--embeddings {input.embeddings} --gpus {resources.gpu} --out {output.metrics} > {log} 2>&1"


# Ensemble, concatenation or cascade of two runs (config 'combinations') on one fewshot protocol;
# its rows sit beside the methods' under the combination's name.
rule combine:
    input:
        unpack(combination_embeddings),
    output:
        metrics="results/metrics/{dataset}/{setting}/{combination}/seed{seed}/{protocol}.json",
        units="results/metrics/{dataset}/{setting}/{combination}/seed{seed}/{protocol}.npz",
    params:
        spec=combine_spec,
        run=combine_run_info,
    wildcard_constraints:
        combination=COMBINATION_PATTERN,
        protocol=FEWSHOT_PATTERN,
    log:
        "results/logs/combine/{dataset}/{setting}/{combination}/seed{seed}/{protocol}.log",
    benchmark:
        "results/benchmarks/combine/{dataset}/{setting}/{combination}/seed{seed}/{protocol}.tsv"
    threads: rule_threads("combine")
    resources:
        **rule_resources("combine", gpu=0),
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench combine --spec {params.spec:q} --run {params.run:q} "
        "--embeddings {input.a} {input.b} --gpus {resources.gpu} --out {output.metrics} > {log} 2>&1"
