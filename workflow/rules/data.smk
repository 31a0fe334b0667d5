import os

# config imagenet_val: {flat_dir, solution, out}: the flat ImageNet val folder, LOC_val_solution.csv,
# and where the wnid folders (symlinks) go. A dataset whose val_root is that folder depends on it.
IMAGENET_VAL = config.get("imagenet_val") or {}
READS_REARRANGED_VAL = {
    dataset: IMAGENET_VAL["out"]
    for dataset, ds in CFG["datasets"].items()
    if IMAGENET_VAL.get("out")
    and ds.get("val_root")
    and os.path.normpath(ds["val_root"]) == os.path.normpath(IMAGENET_VAL["out"])
}


# Read a dataset's official files; write images (or paths), labels and the validation split.
# tieredImageNet also writes {split}_images.npy (decoded images) next to data.npz; an image-file
# dataset with store: resized, {split}_store.u8 (decoded once, shared by every method and seed).
rule prepare:
    input:
        unpack(lambda wc: {"val": READS_REARRANGED_VAL[wc.dataset]} if wc.dataset in READS_REARRANGED_VAL else {}),
    output:
        data="results/data/{dataset}/data.npz",
    params:
        spec=prepare_spec,
    log:
        "results/logs/prepare/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare/{dataset}.tsv"
    threads: rule_threads("prepare")
    resources:
        **rule_resources("prepare"),
    conda:
        "../../envs/fgbench.yaml"
    shell:
        "fgbench prepare --spec {params.spec:q} --out {output.data} --threads {threads} > {log} 2>&1"


if IMAGENET_VAL:

    # Sort the flat ImageNet val images into <out>/<wnid>/ (symlinks; the original stays untouched).
    rule rearrange_imagenet_val:
        input:
            val=IMAGENET_VAL["flat_dir"],
            solution=IMAGENET_VAL["solution"],
        output:
            directory(IMAGENET_VAL["out"]),
        log:
            "results/logs/rearrange_imagenet_val.log",
        benchmark:
            "results/benchmarks/rearrange_imagenet_val.tsv"
        threads: rule_threads("rearrange_imagenet_val", by_dataset=False)
        resources:
            **rule_resources("rearrange_imagenet_val", by_dataset=False),
        conda:
            "../../envs/fgbench.yaml"
        shell:
            "fgbench rearrange-val --val-dir {input.val:q} --solution {input.solution:q} --out {output:q} > {log} 2>&1"
