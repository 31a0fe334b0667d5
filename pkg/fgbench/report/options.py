"""The ``report`` config section: its defaults and checks (no heavy imports: read at DAG time)."""

from fgbench.errors import ConfigError

#: ``report.tsne``: draw a t-SNE plot of every run's first layer; ``report.tsne_points``: at most
#: this many test images per plot (a stratified subsample).
REPORT_DEFAULTS = {"tsne": True, "tsne_points": 2000}


def validate_report(section) -> dict:
    """The ``report`` section with defaults filled in; ``ConfigError`` naming a bad key."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"config key 'report' must be a mapping, got {type(section).__name__}")
    unknown = set(section) - set(REPORT_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in 'report'; valid keys: {', '.join(REPORT_DEFAULTS)}")
    out = {**REPORT_DEFAULTS, **section}
    if not isinstance(out["tsne"], bool):
        raise ConfigError(f"config key 'report.tsne' must be true or false, got {out['tsne']!r}")
    points = out["tsne_points"]
    if isinstance(points, bool) or not isinstance(points, int) or points < 10:
        raise ConfigError(f"config key 'report.tsne_points' must be an integer >= 10, got {points!r}")
    return out
