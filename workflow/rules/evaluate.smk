# One protocol on one run's test embeddings -> tidy metric rows.
rule evaluate:
    input:
        embeddings=f"results/embeddings/{RUN_DIR}/test.npz",
    output:
        metrics=f"results/metrics/{RUN_DIR}/{{protocol}}.json",
    params:
        spec=protocol_spec,
        run=run_info,
    log:
        f"results/logs/evaluate/{RUN_DIR}/{{protocol}}.log",
    benchmark:
        f"results/benchmarks/evaluate/{RUN_DIR}/{{protocol}}.tsv"
    threads: threads_for("evaluate")
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench evaluate --spec {params.spec:q} --run {params.run:q} "
        "--embeddings {input.embeddings} --out {output.metrics} > {log} 2>&1"
