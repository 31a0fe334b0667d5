"""Every `snakemake` command the README and docs/ show is accepted (issue 11, item 5): each one
that can run here is dry-run verbatim (plus -n) in a copy of the checkout's top level; the
others are skipped by an explicit list that says why."""

import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# What a command needs that this machine cannot offer: (pattern, reason).
NEEDS = [
    (r"my_paths\.yaml|my_experiment\.yaml", "a file the user writes (dataset paths, an own matrix)"),
    (r"profiles/slurm", "a SLURM cluster (tests/test_slurm.py runs the profile on a throwaway one)"),
    (r"--report", "a finished run (tests/test_html_report.py)"),
    (r"--lint", "not a run (tests/test_workflow.py lints the workflow)"),
    (r"\s-n(\s|$)", "already a dry run of a command listed separately"),
    (r"--unlock", "not a run: it lifts a lock (tests/test_bad_input.py checks fgbench.unlock)"),
]


def documented_commands() -> list:
    """`snakemake ...` from code blocks (a line starting with it) and inline code, comments cut."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        lines = [m.group(1) for m in re.finditer(r"^\s*(snakemake [^\n]*)$", text, re.M)]
        inline = re.findall(r"`(snakemake [^`]+)`", text)
        for command in lines + inline:
            command = command.split(" #")[0].strip()
            if command not in [c for _, c in found]:
                found.append((doc.name, command))
    return found


COMMANDS = documented_commands()


def why_not_here(command: str):
    return next((reason for pattern, reason in NEEDS if re.search(pattern, command)), None)


def test_the_docs_show_the_commands_this_test_checks():
    runnable = [c for _, c in COMMANDS if why_not_here(c) is None]
    assert "snakemake --cores 2" in runnable and "snakemake --cores 2 --config 'seeds=[0,1,2]'" in runnable


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The checkout's top level, linked into a fresh folder: dry runs leave nothing in the repo."""
    folder = tmp_path_factory.mktemp("checkout")
    for name in ("Snakefile", "config.yaml", "workflow", "profiles", "envs"):
        (folder / name).symlink_to(REPO / name)
    return folder


def test_documented_commands_dry_run(checkout):
    """All in parallel: each parses the workflow (a few seconds), none runs a job."""
    procs = []
    for doc, command in COMMANDS:
        if why_not_here(command) is None:
            argv = [sys.executable, "-m", "snakemake", *shlex.split(command)[1:], "-n", "--quiet", "rules"]
            procs.append((doc, command, subprocess.Popen(argv, cwd=checkout, stdout=subprocess.PIPE,
                                                         stderr=subprocess.STDOUT, text=True)))
    assert len(procs) >= 4
    for doc, command, proc in procs:
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f"{doc}: `{command}` fails:\n{out[-3000:]}"

