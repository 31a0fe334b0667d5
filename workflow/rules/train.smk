# Train one method on one setting with one seed; resumes from its last checkpoint. The job claims
# resources.gpu free GPUs of its machine (one DDP process each when more than one).
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
    threads: rule_threads("train")
    resources:
        **rule_resources("train", gpu=0),
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench train --spec {params.spec:q} --data {input.data} --out-dir {params.out_dir} "
        "--gpus {resources.gpu} > {log} 2>&1"
