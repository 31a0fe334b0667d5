"""The ``report`` and ``compare`` config sections: their defaults and checks, and which LaTeX
tables a config fills (no heavy imports: read at DAG time)."""

from fgbench.errors import ConfigError

#: ``report.tsne``: draw a t-SNE plot of every run's first layer; ``report.tsne_points``: at most
#: this many test images per plot (a stratified subsample).
REPORT_DEFAULTS = {"tsne": True, "tsne_points": 2000}


def _section(section, name: str, defaults: dict) -> dict:
    """A config section as a mapping of known keys (None: empty); ``ConfigError`` otherwise."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"config key '{name}' must be a mapping, got {type(section).__name__}")
    unknown = set(section) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in '{name}'; valid keys: {', '.join(defaults)}")
    return section


def validate_report(section) -> dict:
    """The ``report`` section with defaults filled in; ``ConfigError`` naming a bad key."""
    out = {**REPORT_DEFAULTS, **_section(section, "report", REPORT_DEFAULTS)}
    if not isinstance(out["tsne"], bool):
        raise ConfigError(f"config key 'report.tsne' must be true or false, got {out['tsne']!r}")
    points = out["tsne_points"]
    if isinstance(points, bool) or not isinstance(points, int) or points < 10:
        raise ConfigError(f"config key 'report.tsne_points' must be an integer >= 10, got {points!r}")
    return out


#: ``compare.baseline``: per setting, the method (or combination) every other is compared with, on
#: its first embedded layer; ``compare.test``: the paired test (``t`` or ``wilcoxon``);
#: ``compare.resamples``: hierarchical-bootstrap resamples per table.
COMPARE_DEFAULTS = {
    "baseline": {"coarse_to_fine": "supervised_coarse", "open_set": "triplet", "closed_set": "softmax"},
    "test": "t",
    "resamples": 2000,
}
SETTINGS = ("coarse_to_fine", "open_set", "closed_set")


def validate_compare(section, known: set) -> dict:
    """The ``compare`` section with defaults filled in (``baseline`` merged per setting);
    ``ConfigError`` naming a bad key. ``known``: valid baselines (methods and combinations)."""
    section = _section(section, "compare", COMPARE_DEFAULTS)
    baseline = section.get("baseline") or {}
    if not isinstance(baseline, dict):
        raise ConfigError(f"config key 'compare.baseline' must map settings to a method, got {baseline!r}")
    for setting, name in baseline.items():
        if setting not in SETTINGS:
            raise ConfigError(f"unknown setting '{setting}' in 'compare.baseline'; valid settings: {', '.join(SETTINGS)}")
        if name is not None and name not in known:
            raise ConfigError(f"config key 'compare.baseline.{setting}' names '{name}', which is neither a method "
                              f"nor a combination; valid: {', '.join(sorted(known))}")
    out = {**COMPARE_DEFAULTS, **section, "baseline": {**COMPARE_DEFAULTS["baseline"], **baseline}}
    if out["test"] not in ("t", "wilcoxon"):
        raise ConfigError(f"config key 'compare.test' is {out['test']!r}; valid values: t, wilcoxon")
    n = out["resamples"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 100:
        raise ConfigError(f"config key 'compare.resamples' must be an integer >= 100, got {n!r}")
    return out


def expected_latex(benchmark: dict, protocols) -> list[tuple[str, str]]:
    """(kind, dataset) of every LaTeX table a config can fill: coarse-to-fine for datasets with
    that setting, retrieval for every dataset when the protocol runs, closed set for datasets with
    that setting when its protocol runs. (Light: read when Snakemake builds the DAG.)"""
    out = []
    for dataset, settings in sorted(benchmark.items()):
        if "coarse_to_fine" in settings and any(p.startswith("fewshot") for p in protocols):
            out.append(("coarse_to_fine", dataset))
        if "retrieval" in protocols:
            out.append(("retrieval", dataset))
        if "closed_set" in settings and "closed_set" in protocols:
            out.append(("closed_set", dataset))
    return out
