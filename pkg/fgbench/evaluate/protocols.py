"""The evaluation protocols by name, with their defaults (torch-free, read at DAG time).

A protocol is a kind (``fewshot``, ``retrieval`` or ``closed_set``) plus parameters;
``config.yaml`` picks protocols by name and may override parameters. Definitions: DESIGN.md,
"Protocols".

``closed_set`` reads only the ``PROBS_LAYER`` of an embeddings file (class probabilities); the
embedding protocols (few-shot, retrieval) skip that layer: a probability vector is not an
embedding.
"""

PROBS_LAYER = "probs"

FEWSHOT_DEFAULTS = {
    "n_shot": 1,
    "n_query": 15,
    "n_aug": 5,
    "episodes": 1000,
    "classifier": "logreg",
    "intra": False,
    "max_ways": None,
}

PROTOCOLS = {
    "fewshot_5way": {"kind": "fewshot", **FEWSHOT_DEFAULTS, "n_way": 5},
    "fewshot_all": {"kind": "fewshot", **FEWSHOT_DEFAULTS, "n_way": "all"},
    # ANCOR's intra-class protocol: one coarse class, at most 5 of its fine classes.
    "fewshot_intra": {"kind": "fewshot", **FEWSHOT_DEFAULTS, "n_way": "all", "intra": True, "max_ways": 5},
    # SCGM's intra-class protocol: one coarse class, all of its fine classes.
    "fewshot_intra_all": {"kind": "fewshot", **FEWSHOT_DEFAULTS, "n_way": "all", "intra": True},
    # 5-shot versions: 5 support images x n_aug views = 25 support vectors per class.
    "fewshot_5way_5shot": {"kind": "fewshot", **FEWSHOT_DEFAULTS, "n_way": 5, "n_shot": 5},
    "fewshot_all_5shot": {"kind": "fewshot", **FEWSHOT_DEFAULTS, "n_way": "all", "n_shot": 5},
    "retrieval": {
        "kind": "retrieval",
        "recall_k": [1, 2, 4, 8],
        "metric": "cosine",
        "nmi": True,
        "f1": False,
    },
    # The vMF paper's closed-set table: accuracy and calibration of the class probabilities.
    "closed_set": {"kind": "closed_set", "ece_bins": 15},
}

CLASSIFIERS = ("logreg", "cosine_nn")
