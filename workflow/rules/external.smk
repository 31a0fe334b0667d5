# External models (config 'models': torchvision, timm, callable, released checkpoints,
# precomputed embeddings): the test embeddings of one model on one dataset and setting, written
# where a trained run's go, so rule evaluate and everything after it treat the model as a method.
# fgbench.external holds the logic. A model is evaluated under every configured seed with the same
# embeddings: the first seed's job embeds, the others copy its file (a model has no seed).
rule embed_model:
    input:
        data=rules.prepare.output.data,
        files=lambda wc: model_files(wc.model, wc.dataset, wc.setting),
        first_seed=lambda wc: first_seed_embeddings(wc),
    output:
        embeddings="results/embeddings/{dataset}/{setting}/{model}/seed{seed}/test.npz",
    params:
        spec=lambda wc: model_spec(wc.dataset, wc.setting, wc.model)[0],
        same_as=lambda wc: " ".join(f"--copy-of {path}" for path in first_seed_embeddings(wc)),
    wildcard_constraints:
        model=MODEL_PATTERN,
    log:
        "results/logs/embed_model/{dataset}/{setting}/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/embed_model/{dataset}/{setting}/{model}/seed{seed}.tsv"
    threads: rule_threads("embed")
    resources:
        **rule_resources("embed", gpu=0),
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench embed-model --spec {params.spec:q} --data {input.data} {params.same_as} --gpus {resources.gpu} "
        "--out {output.embeddings} > {log} 2>&1"
