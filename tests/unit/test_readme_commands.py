"""The commands README.md and cluster/README.md give, read out of their code blocks: every module they run exists
and takes the options written, every config, cluster YAML and policy file they name exists and loads, and the job
commands survive Ray's entrypoint quoting. (The ones that run on one machine are run in tests/integration.)
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from study.cluster.block import read_study_block
from study.config import load_config

ROOT = Path(__file__).parents[2]
READMES = [ROOT / "README.md", ROOT / "cluster" / "README.md"]
SEPARATORS = {"&&", "||", ";", "|", "&", ">", "2>&1"}


def code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


def command_lines(path: Path) -> list[str]:
    """Every shell command line of the file's bash blocks, continuations joined, comments dropped."""
    lines = []
    for block in code_blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                lines.append(line)
    return lines


def words(line: str) -> list[str]:
    """The line's words, with quoted command lines (ray exec '...', bash -c '...') split into theirs too."""
    out = []
    for word in shlex.split(line, comments=True):
        out.append(word)
        if " " in word and ("python" in word or "ray " in word):
            out += [";", *words(word), ";"]
    return out


def invocations(program: list[str], lines: list[str]) -> list[list[str]]:
    """Each run of ``program`` (e.g. ["python", "-m"]) with its arguments up to a shell separator."""
    found = []
    for line in lines:
        ws = words(line)
        for i in range(len(ws) - len(program) + 1):
            if ws[i : i + len(program)] == program:
                args = []
                for word in ws[i + len(program) :]:
                    if word in SEPARATORS or " " in word:
                        break
                    args.append(word)
                found.append(args)
    return found


ALL_LINES = [line for path in READMES for line in command_lines(path)]
MODULE_RUNS = invocations(["python", "-m"], ALL_LINES)


def test_the_readmes_have_commands() -> None:
    assert len(MODULE_RUNS) >= 15
    modules = {run[0] for run in MODULE_RUNS}
    assert {"study.run", "study.stage", "study.mlflow_server", "trainables.data.synthetic"} <= modules


def _help(module: str) -> str:
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [module, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        sys.argv = argv
    return out.getvalue()


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy on an imported module
@pytest.mark.parametrize("module", sorted({run[0] for run in MODULE_RUNS} - {"pytest"}))
def test_each_module_takes_the_options_written(module: str) -> None:
    text = _help(module)
    written = {w.split("=")[0] for run in MODULE_RUNS if run[0] == module for w in run[1:] if w.startswith("--")}
    assert written <= set(re.findall(r"--[a-z][a-z-]*", text)), f"{module}: {written}"


def test_every_config_named_exists_and_loads() -> None:
    configs = {run[run.index("--config") + 1] for run in MODULE_RUNS if "--config" in run}
    configs |= set(re.findall(r"study/configs/[\w.]+\.yaml", " ".join(p.read_text() for p in READMES)))
    assert "study/configs/gpu.yaml" in configs
    for config in configs:
        if "<" not in config:
            assert load_config(ROOT / config).source.endswith(config)


def test_every_cluster_yaml_named_exists_and_reads() -> None:
    named = set(re.findall(r"cluster/[\w.-]+\.yaml", " ".join(ALL_LINES)))
    assert {"cluster/gpu.yaml", "cluster/local.yaml"} <= named
    for path in named:
        assert read_study_block(ROOT / path).data.healthy_uri.startswith("s3://")


def test_every_policy_file_named_exists_and_parses() -> None:
    files = set()
    for line in ALL_LINES:
        for name in re.findall(r"file://(\S+)", line):
            for node in ("head", "worker"):
                files.add(name.replace("$node", node))
    assert {"cluster/iam/head-policy.json", "cluster/iam/worker-policy.json", "cluster/iam/ec2-trust.json"} <= files
    for name in files:
        assert json.loads((ROOT / name).read_text())["Statement"]


def test_job_entrypoints_survive_ray_quoting() -> None:
    """`ray job submit` quotes each word after `--`: a whole command line as one word is run as a program name."""
    jobs = invocations(["ray", "job", "submit"], ALL_LINES)
    assert len(jobs) >= 2
    for line in ALL_LINES:
        if "ray job submit" in line:
            entry = shlex.split(line)[shlex.split(line).index("--") + 1 :]
            assert entry[0] in ("bash", "python") and (entry[0] != "bash" or entry[1] == "-c"), line


def test_mlflow_ui_is_reached_the_way_the_study_says() -> None:
    assert invocations(["ray", "attach", "cluster/gpu.yaml", "--port-forward"], ALL_LINES) == [["5000"]]
    raw = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    assert raw["metadata"]["study"]["mlflow"]["tracking_uri"].endswith(":5000")


def test_iam_as_ray_documents_it() -> None:
    """The head may pass exactly the workers' role; the workers read the data and the shared slice cache, and write
    Ray's storage only."""
    iam = ROOT / "cluster" / "iam"
    head = json.loads((iam / "head-policy.json").read_text())["Statement"]
    worker = json.loads((iam / "worker-policy.json").read_text())["Statement"]
    passes = [s for s in head if s["Action"] == "iam:PassRole"]
    assert len(passes) == 1 and passes[0]["Resource"].endswith(":role/lesion-study-worker")
    cluster = read_study_block(ROOT / "cluster" / "gpu.yaml")
    study = cluster.data
    bucket = study.healthy_uri.split("/")[2]
    data = [f"arn:aws:s3:::{bucket}/{uri.split('/', 3)[3]}*" for uri in (study.healthy_uri, study.lesion_uri)]
    storage = f"arn:aws:s3:::{bucket}/{cluster.ray_storage.split('/', 3)[3]}*"
    shared_cache = f"arn:aws:s3:::{bucket}/{study.shared_cache_uri.split('/', 3)[3]}*"  # read by every node

    def allowed(statements: list[dict], action: str) -> set[str]:
        found = set()
        for s in statements:
            actions = [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
            if action in actions:
                found |= {s["Resource"]} if isinstance(s["Resource"], str) else set(s["Resource"])
        return found

    assert allowed(worker, "s3:GetObject") == {*data, storage, shared_cache}
    assert allowed(worker, "s3:PutObject") == allowed(worker, "s3:DeleteObject") == {storage}
    actions = {a for s in worker for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert all(a.startswith("s3:") and "*" not in a for a in actions)
    assert set(data) <= allowed(head, "s3:GetObject") and storage in allowed(head, "s3:PutObject")
    raw = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    profiles = {n: t["node_config"]["IamInstanceProfile"]["Name"] for n, t in raw["available_node_types"].items()}
    head_type = raw["head_node_type"]
    assert profiles.pop(head_type) == "lesion-study-head" and set(profiles.values()) == {"lesion-study-worker"}


def test_readmes_count_the_gpu_studys_families_and_trials() -> None:
    """What the READMEs say study/configs/gpu.yaml runs is what it runs: its number of families and trials."""
    config = load_config(ROOT / "study" / "configs" / "gpu.yaml")
    families, trials = len(config.families), config.num_samples
    for path in READMES:
        text = " ".join(path.read_text().split())
        counted = 0
        for sentence in re.findall(r"`study/configs/gpu.yaml`[^.]*", text):
            said_families = re.findall(r"\b(\w+) (?:paper )?families", sentence)
            said_trials = re.findall(r"\b(\w+) trials", sentence)
            if said_families or said_trials:
                counted += 1
                assert said_families == [str(families)] and said_trials == [str(trials)], (path.name, sentence)
        assert counted, path.name  # each README says it
