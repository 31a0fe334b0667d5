"""The reproduction ledger (workflow/ledger.yaml, fgbench.report.ledger): its entries point to
real experiments and buildable targets, and the join with a summary gives the right numbers."""

import math
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import REPO
from fgbench.cli import main
from fgbench.config import train_spec, validate
from fgbench.errors import ConfigError
from fgbench.report.ledger import (CSV_COLUMNS, NO_CONFIG, NOT_RUN, RUN, format_ledger_markdown, ledger_table,
                                   load_ledger, targets)

LEDGER = REPO / "workflow/ledger.yaml"
EXPERIMENTS = REPO / "workflow/experiments"


def experiment(name: str) -> dict:
    return yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())


def test_ledger_is_not_loaded_as_an_experiment():
    # workflow/paper.smk loads every *.yaml of workflow/experiments/ as an experiment
    assert LEDGER.exists() and not list(EXPERIMENTS.glob("ledger*"))


def test_ledger_holds_ancors_readme_table():
    rows = load_ledger(LEDGER)
    # ANCOR's README (github.com/guybuk/ANCOR): 10 settings, 5-way and all-way each
    assert len(rows) == 20
    by_key = {(r["dataset"], r["epochs"], r["protocol"]): r for r in rows}
    assert by_key[("living17", 200, "fewshot_5way")]["published"] == 89.23
    assert by_key[("living17", 200, "fewshot_5way")]["interval"] == 0.55
    assert by_key[("entity30", 800, "fewshot_all")]["published"] == 50.85
    assert by_key[("tiered_imagenet", 200, "fewshot_all")]["published"] == 11.97
    assert by_key[("cifar100", 200, "fewshot_5way")]["published"] == 74.56
    # no config trains 800 epochs: those entries say so instead of naming a target
    for row in rows:
        assert (row["experiment"] is None) == (row["epochs"] == 800), row
        if row["experiment"] is None:
            assert row["target"] is None and "800" in row["note"]


def test_every_entry_matches_its_experiment_config():
    """The experiment trains the entry's method in its setting for the published epochs, and
    evaluates the entry's protocol on the entry's layer."""
    for row in load_ledger(LEDGER):
        if row["experiment"] is None:
            continue
        cfg = validate(experiment(row["experiment"]))
        assert row["method"] in cfg["benchmark"][row["dataset"]][row["setting"]], row
        assert row["protocol"] in cfg["protocols"] and cfg["protocols"][row["protocol"]]["n_shot"] == 1, row
        assert row["layer"] in cfg["methods"][row["method"]]["embed_layer"], row
        spec = train_spec(cfg, row["dataset"], row["setting"], row["method"], cfg["seeds"][0])
        assert spec["train"]["epochs"] == row["epochs"], row


def test_every_target_can_be_built_by_the_paper_workflow(tmp_path):
    """One dry run of workflow/paper.smk asked for every entry's metrics files (every seed)."""
    rows = [r for r in load_ledger(LEDGER) if r["experiment"] is not None]
    names = sorted({r["experiment"] for r in rows})
    wanted = [t for r in rows for t in targets(r, experiment(r["experiment"])["seeds"])]
    assert len(wanted) == 12 * 5  # 6 settings x 2 protocols, 5 seeds each
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow/paper.smk"),
                           "--directory", str(tmp_path), "--cores", "1", "-n", *wanted,
                           "--config", f"experiments=[{','.join(names)}]"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for target in wanted:
        assert f"output: {target}" in proc.stdout, target


def summary_row(dataset, protocol, mean, ci95=math.nan, ci95_episodes=math.nan, n_seeds=3, layer="backbone"):
    return dict(dataset=dataset, setting="coarse_to_fine", method="ancor", layer=layer, protocol=protocol,
                metric="accuracy", n_seeds=n_seeds, mean=mean, ci95=ci95, ci95_episodes=ci95_episodes, seeds="0,1,2")


def test_join_with_a_summary():
    breeds = pd.DataFrame([
        summary_row("living17", "fewshot_5way", 0.91, ci95=0.012),
        summary_row("living17", "fewshot_5way", 0.50, ci95=0.01, layer="head"),  # another layer: not ANCOR's
        summary_row("living17", "fewshot_all", 0.4, ci95_episodes=0.0011, n_seeds=1),
    ])
    table = ledger_table(load_ledger(LEDGER), {"coarse_to_fine_breeds": breeds})
    index = table.set_index(["dataset", "epochs", "protocol"])
    five = index.loc[("living17", 200, "fewshot_5way")]
    assert (five["fgbench"], five["fgbench_ci"], five["fgbench_ci_kind"]) == (91.0, 1.2, "seeds")
    assert five["gap"] == pytest.approx(91.0 - 89.23) and five["status"] == RUN and five["n_seeds"] == 3
    all_way = index.loc[("living17", 200, "fewshot_all")]
    assert (all_way["fgbench"], all_way["fgbench_ci"], all_way["fgbench_ci_kind"]) == (40.0, 0.11, "episodes")
    assert all_way["gap"] == pytest.approx(40.0 - 45.14)
    # a dataset of the experiment without a row, an experiment without results, 800 epochs
    assert index.loc[("nonliving26", 200, "fewshot_5way"), "status"] == NOT_RUN
    assert index.loc[("cifar100", 200, "fewshot_5way"), "status"] == NOT_RUN
    assert index.loc[("living17", 800, "fewshot_5way"), "status"] == NO_CONFIG
    assert table["fgbench"].isna().sum() == 18
    markdown = format_ledger_markdown(table)
    assert "| 89.23 ± 0.55 | 91.00 ± 1.20 | +1.77 | coarse_to_fine_breeds |" in markdown
    assert "| 45.14 ± 0.12 | 40.00 ± 0.11 | -5.14 |" in markdown
    assert markdown.count("| not run |") == 10 and markdown.count("| no config |") == 8


def test_cli_writes_the_ledger(tmp_path):
    summary = tmp_path / "summary.csv"
    pd.DataFrame([summary_row("cifar100", "fewshot_all", 0.3012, ci95=0.004)]).to_csv(summary, index=False)
    out = tmp_path / "tables"
    assert main(["ledger", "--ledger", str(LEDGER), "--summary", f"coarse_to_fine_cifar100={summary}",
                 "--csv", str(out / "ledger.csv"), "--markdown", str(out / "ledger.md")]) == 0
    table = pd.read_csv(out / "ledger.csv")
    assert list(table.columns) == CSV_COLUMNS and len(table) == 20
    row = table.query("dataset == 'cifar100' and protocol == 'fewshot_all'").iloc[0]
    assert (row["fgbench"], row["fgbench_ci"], row["gap"], row["status"]) == (30.12, 0.4, 0.28, RUN)
    assert "30.12 ± 0.40" in (out / "ledger.md").read_text()


@pytest.mark.parametrize("change, message", [
    ({"target": "results/coarse_to_fine_breeds/metrics/living17/coarse_to_fine/ancor/seed{seed}/fewshot_all.json"},
     "rows[0].target is 'results/coarse_to_fine_breeds/metrics/living17/coarse_to_fine/ancor/seed{seed}/"
     "fewshot_all.json', but its experiment, dataset, setting, method and protocol make"),
    ({"target": None}, "rows[0] sets only one of 'experiment' and 'target'"),
    ({"published": "89.2%"}, "rows[0].published must be a number (in %), got '89.2%'"),
    ({"dataset_name": "x"}, "rows[0] unknown key(s) ['dataset_name']"),
])
def test_a_bad_entry_is_named(tmp_path, change, message):
    data = yaml.safe_load(LEDGER.read_text())
    data["rows"] = [{**data["rows"][0], **change}]
    bad = tmp_path / "ledger.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as error:
        load_ledger(bad)
    assert message in str(error.value) and str(bad) in str(error.value)
