"""Issue 27 items 1, 2 and 8: no command from a value, nothing written or deleted outside the run folder.

Oracles: the sbatch text submitit would submit (``_make_submission_file_text``, no cluster) executed by bash
with a stub ``srun`` (a canary file must not appear); the file system (nothing created or deleted outside
``out_root``); typed errors naming the key.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import submitit
import yaml

from heartbeit_lib import launch, safety
from heartbeit_lib.pipeline import predict, runs, sweep

NL = "\ntouch {canary}\n"


def _sweep_file(tmp_path, out_root, **over):
    data = {"name": "s", "out_root": str(out_root), "executor": "slurm",
            "grid": {"task": ["toy"], "model": ["resnet152_scratch"], "fraction": [1.0], "seed": [0]},
            "params": {"cohort_run": str(out_root / "01_preprocess" / "{task}"), "epochs": 1, "image_size": 32,
                       "model_size": "micro", "device": "cpu"},
            "resources": {"default": {"partition": "gpu", "gpus": 1, "cpus": 2, "mem_gb": 8, "time_min": 10,
                                      "sbatch": {"qos": "normal"}}}}
    for k, v in over.items():
        if k.startswith("res_"):
            data["resources"]["default"][k[4:]] = v
        else:
            data[k] = v
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _script_runs_canary(ex, tmp_path) -> bool:
    """Run the sbatch script submitit would write with bash (``srun`` a no-op): did the canary file appear?"""
    ex.parameters["map_count"] = 1
    text = ex._make_submission_file_text(ex._submitit_command_str, "uid")
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "srun").write_text("#!/bin/sh\nexit 0\n")
    (stub / "srun").chmod(0o755)
    subprocess.run(["bash", "-c", text], env={**os.environ, "PATH": f"{stub}:{os.environ['PATH']}"},
                   capture_output=True, timeout=30, cwd=tmp_path)
    return (tmp_path / "canary").exists()


@pytest.fixture
def srun_exists(monkeypatch):
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))


def test_a_clean_sweep_script_runs_no_canary(tmp_path, srun_exists):
    """The positive control: the same path with harmless values builds a script that runs nothing extra."""
    spec = sweep.load_sweep(_sweep_file(tmp_path, tmp_path / "o"))
    assert not _script_runs_canary(sweep.slurm_executor(spec, "resnet152_scratch"), tmp_path)


@pytest.mark.parametrize("case", ["partition", "qos", "sbatch_key", "name", "log_dir", "time_min", "mem_gb",
                                  "gpus", "out_root", "account", "constraint", "setup"])
def test_sweep_values_never_inject_into_the_sbatch_script(tmp_path, srun_exists, case):
    canary = tmp_path / "canary"
    evil = NL.format(canary=canary)
    over = {"partition": {"res_partition": "gpu" + evil}, "qos": {"res_sbatch": {"qos": "normal" + evil}},
            "sbatch_key": {"res_sbatch": {"qos" + evil.replace("=", "") + "#": "normal"}},
            "name": {"name": "s" + evil}, "log_dir": {"log_dir": str(tmp_path / "logs") + evil},
            "time_min": {"res_time_min": "10" + evil}, "mem_gb": {"res_mem_gb": "8" + evil},
            "gpus": {"res_gpus": "1" + evil}, "account": {"res_account": "lab" + evil},
            "constraint": {"res_constraint": "a100" + evil}, "setup": {"res_setup": ["true" + evil]}}.get(case, {})
    out_root = tmp_path / ("o" + evil if case == "out_root" else "o")
    path = _sweep_file(tmp_path, tmp_path / "o", **over)
    key = {"sbatch_key": "sbatch", "gpus": "gpus", "time_min": "time", "mem_gb": "mem",
           "log_dir": "log", "out_root": "out_root"}.get(case, case)
    with pytest.raises(runs.ConfigError, match=key):
        spec = sweep.load_sweep(path, out_root=str(out_root) if case == "out_root" else None)
        _script_runs_canary(sweep.slurm_executor(spec, "resnet152_scratch"), tmp_path)
    assert not canary.exists()


@pytest.mark.parametrize("flag", [["--partition", "gpu{e}"], ["--account", "lab{e}"], ["--constraint", "a{e}"],
                                  ["--sbatch", "qos=high{e}"], ["--sbatch", "qos{e}=high"],
                                  ["--log-dir", "{tmp}/logs{e}"], ["--setup", "true{e}"]])
def test_launch_values_never_inject_into_the_sbatch_script(tmp_path, srun_exists, flag):
    evil = NL.format(canary=tmp_path / "canary")
    flag = [f.format(e=evil, tmp=tmp_path) for f in flag]
    args, _ = launch.parse(["pretrain", "--nodes", "1", "--gpus-per-node", "1", "--log-dir", str(tmp_path / "l"),
                            *flag, "-p", "run_id", "x"])
    with pytest.raises(launch.LaunchError, match=flag[0].strip("-").replace("-", "_").split("_")[0]):
        _script_runs_canary(launch.make_executor(args), tmp_path)
    assert not (tmp_path / "canary").exists()


def test_launch_sbatch_option_without_value_is_typed(tmp_path):
    args, _ = launch.parse(["pretrain", "--log-dir", str(tmp_path), "--sbatch", "exclusive"])
    with pytest.raises(launch.LaunchError, match="KEY=VALUE"):
        launch.make_executor(args)


# ---------------------------------------------------------------- item 8: str.format placeholders


@pytest.mark.parametrize("value, match", [("{0}", "0"), ("{task.nope}", "task.nope"), ("{task[0]}", "task"),
                                          ("{nope}", "nope"), ("{task", "format"), ("{task!r}", "conversion")])
def test_sweep_params_format_only_the_documented_placeholders(tmp_path, value, match):
    path = _sweep_file(tmp_path, tmp_path / "o", params={"cohort_run": value, "epochs": 1})
    with pytest.raises(sweep.SweepError, match="placeholder|format|conversion") as e:
        sweep.load_sweep(path)
    assert "cohort_run" in str(e.value) and match in str(e.value)


def test_sweep_params_keep_their_placeholders(tmp_path):
    spec = sweep.load_sweep(_sweep_file(tmp_path, tmp_path / "o", params={
        "cohort_run": "x/{task}-{model}-{fraction}-{seed}/{{literal}}", "epochs": 1}))
    assert spec.params_for(spec.combinations()[0])["cohort_run"] == "x/toy-resnet152_scratch-1.0-0/{literal}"


# ---------------------------------------------------------------- item 2: path components


@pytest.mark.parametrize("task", ["../../../victim", "/abs/victim", "a/b", "..", ".hidden", "x\ny"])
def test_a_sweep_task_never_leaves_out_root_nor_deletes_there(tmp_path, task):
    victim = tmp_path / "victim-resnet152_scratch-f1.0-s0"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    out = tmp_path / "a" / "b" / "o"
    path = _sweep_file(tmp_path, out, executor="sequential",
                       grid={"task": [task], "model": ["resnet152_scratch"], "fraction": [1.0], "seed": [0]})
    with pytest.raises(sweep.SweepError, match="task|run_id"):
        spec = sweep.load_sweep(path)
        sweep.run_sweep(spec, lambda *a, **k: None, progress=False)
    assert (victim / "precious.txt").read_text() == "keep"
    assert {p.name for p in tmp_path.iterdir()} - {"a"} == {"sweep.yaml", victim.name}  # nothing new outside


def test_a_sweep_never_deletes_a_folder_outside_its_run_folders(tmp_path):
    """Defence in depth: even a spec built by hand with a hostile run id deletes nothing outside."""
    victim = tmp_path / "victim"
    victim.mkdir()
    with pytest.raises(safety.UnsafeValueError):
        safety.remove_tree(victim, tmp_path / "o")
    link = tmp_path / "o" / "link"
    link.parent.mkdir()
    link.symlink_to(victim)
    with pytest.raises(safety.UnsafeValueError):
        safety.remove_tree(link, tmp_path / "o")
    assert victim.is_dir()


@pytest.mark.parametrize("run_id", ["../../x", "/tmp/x-abs-run", "a/b", "..", ".", "-x", "a\nb", "x" * 300])
def test_run_ids_are_one_safe_component(tmp_path, run_id):
    with pytest.raises(runs.ConfigError, match="run_id"):
        predict.PredictConfig.from_dict({"finetune_runs": ["r"], "data_root": "d", "run_id": run_id,
                                         "out_root": str(tmp_path / "o")})
    if run_id in ("-x", "a\nb"):
        return  # an explicit (code-given) run_id need only be one component inside the notebook folder
    with pytest.raises(runs.ConfigError, match="run_id"):
        runs.start_run("07_predict", predict.PredictConfig.from_dict(
            {"finetune_runs": ["r"], "data_root": "d", "out_root": str(tmp_path / "o")}), run_id=run_id)
    assert not (tmp_path / "x").exists() and not os.path.exists("/tmp/x-abs-run")


def test_predict_cli_refuses_a_run_id_that_leaves_out_root(tmp_path):
    with pytest.raises(runs.ConfigError, match="run_id"):
        predict.main(["-p", "finetune_runs", str(tmp_path / "r"), "-p", "data_root", str(tmp_path),
                      "-p", "run_id", "../../x", "-p", "out_root", str(tmp_path / "o")])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- item 5: two runs, one folder


@pytest.mark.slow
def test_a_second_run_of_one_folder_is_refused_by_name(tmp_path):
    """Process A holds the run folder (started, not finished); process B's predict with the same run_id is
    refused before it writes anything. Oracle: B's error names the run id, A's config.yaml is untouched."""
    code = ("import sys, time; from heartbeit_lib.pipeline import predict, runs; "
            "cfg = predict.PredictConfig.from_dict({'finetune_runs': ['A'], 'data_root': 'd', 'run_id': 'same', "
            f"'out_root': {str(tmp_path / 'o')!r}}}); runs.start_run('07_predict', cfg); print('started', flush=True); "
            "time.sleep(60)")
    a = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert a.stdout.readline().strip() == "started"
        before = (tmp_path / "o" / "07_predict" / "same" / "config.yaml").read_text()
        with pytest.raises(runs.RunFolderBusyError, match="'same'"):
            predict.main(["-p", "finetune_runs", "B", "-p", "data_root", "d", "-p", "run_id", "same",
                          "-p", "out_root", str(tmp_path / "o")])
        assert (tmp_path / "o" / "07_predict" / "same" / "config.yaml").read_text() == before
    finally:
        a.kill()
        a.wait()
    # the kernel released A's lock with A: the folder can be started again, and restarted by its own process
    cfg = predict.PredictConfig.from_dict({"finetune_runs": ["B"], "data_root": "d", "run_id": "same",
                                           "out_root": str(tmp_path / "o")})
    d = runs.start_run("07_predict", cfg)
    assert runs.start_run("07_predict", cfg) == d
    runs.finish_run(d)
