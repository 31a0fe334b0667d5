# Train one method on one setting with one seed; resumes from its last checkpoint.
rule train:
    input:
        data=rules.prepare.output.data,
    output:
        model=f"results/models/{RUN_DIR}/model.pt",
        log_csv=f"results/models/{RUN_DIR}/train_log.csv",
        config=f"results/models/{RUN_DIR}/config.yaml",
    params:
        spec=train_spec,
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
    log:
        f"results/logs/train/{RUN_DIR}.log",
    benchmark:
        f"results/benchmarks/train/{RUN_DIR}.tsv"
    threads: threads_for("train")
    resources:
        gpu=lambda wildcards: CFG.get("resources", {}).get("train", {}).get("gpu", 0),
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench train --spec {params.spec:q} --data {input.data} --out-dir {params.out_dir} > {log} 2>&1"
