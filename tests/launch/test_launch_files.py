"""launch/ files: configs parse and point at files that exist; the SLURM script gives each node its rank."""

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"


def test_accelerate_configs_parse_and_reference_existing_deepspeed_files():
    names = sorted(p.name for p in (LAUNCH / "accelerate").glob("*.yaml"))
    assert names == ["ddp.yaml", "fsdp.yaml", "multinode.yaml", "zero2.yaml", "zero3.yaml"]
    for path in (LAUNCH / "accelerate").glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        assert config["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED"), path
        ds = config.get("deepspeed_config", {}).get("deepspeed_config_file")
        if ds:
            assert (ROOT / ds).is_file(), f"{path.name} points at missing {ds}"


def test_deepspeed_configs_leave_trainer_values_auto():
    stages = {}
    for path in (LAUNCH / "deepspeed").glob("*.json"):
        config = json.loads(path.read_text())
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert config[key] == "auto", (path.name, key)
        stages[path.stem] = config["zero_optimization"]["stage"]
    assert stages == {"zero1": 1, "zero2": 2, "zero2_offload": 2, "zero3": 3, "zero3_offload": 3}
    zero3 = json.loads((LAUNCH / "deepspeed/zero3.json").read_text())["zero_optimization"]
    assert zero3["stage3_gather_16bit_weights_on_model_save"] is True  # final model saved whole


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


PRINT_ARGS = "printf ACCELERATE; printf ' [%s]' \"$@\"; echo\n"


def slurm_script(tmp_path, accelerate: str = PRINT_ARGS, **variables) -> tuple[list[str], dict[str, str]]:
    """The sbatch command and environment, with stand-ins for scontrol/srun/accelerate: srun runs the task
    command on two 'nodes' (SLURM_NODEID 0 and 1) and fails if one fails, accelerate runs `accelerate` (by
    default: prints its arguments), scontrol logs its arguments to scontrol.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "scontrol", f'echo "$@" >> {tmp_path}/scontrol.log\nprintf "head-node\\nnode-2\\n"\n')
    _fake(
        bin_dir,
        "srun",
        'cmd="${@: -1}"\nfor n in 0 1; do SLURM_NODEID=$n bash -c "$cmd" || exit $?; done\n',
    )
    _fake(bin_dir, "accelerate", accelerate)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "0",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_JOB_ID": "77",
        "VENV": str(venv),
        **variables,
    }
    for name in ("GPUS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        if name not in variables:
            env.pop(name, None)
    return ["bash", str(LAUNCH / "slurm.sbatch"), "1b", "--set", "logging.run_name=a b"], env


def run_slurm_script(tmp_path, accelerate: str = PRINT_ARGS, **variables) -> subprocess.CompletedProcess:
    command, env = slurm_script(tmp_path, accelerate, **variables)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_slurm_script_gives_each_node_its_own_machine_rank(tmp_path):
    proc = run_slurm_script(tmp_path, GPUS_PER_NODE="4")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ACCELERATE")]
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert f"[--machine_rank] [{rank}]" in line
        assert "[--num_machines] [2] [--num_processes] [8]" in line
        assert "[--main_process_ip] [head-node] [--main_process_port] [29500] [--rdzv_backend] [c10d]" in line
        assert "[--max_restarts] [3]" in line  # the elastic agent restarts killed workers
        assert line.endswith("[-m] [plait.train] [1b] [--set] [logging.run_name=a b]")  # one argument


@pytest.mark.parametrize("variables", [{"SLURM_GPUS_ON_NODE": "2"}, {"SLURM_GPUS_PER_NODE": "h100:2"}])
def test_slurm_script_takes_the_gpus_of_the_allocation(tmp_path, variables):
    proc = run_slurm_script(tmp_path, **variables)
    assert proc.returncode == 0, proc.stderr
    assert "[--num_machines] [2] [--num_processes] [4]" in proc.stdout


def test_slurm_script_without_gpu_count_says_so(tmp_path):
    proc = run_slurm_script(tmp_path)
    assert proc.returncode == 2 and "set GPUS_PER_NODE" in proc.stderr


def test_slurm_script_retries_a_failed_launch(tmp_path):
    fails_once = f"if [[ ! -e {tmp_path}/failed ]]; then touch {tmp_path}/failed; exit 1; fi\n" + PRINT_ARGS
    proc = run_slurm_script(tmp_path, fails_once, GPUS_PER_NODE="1")
    assert proc.returncode == 0, proc.stderr
    assert "launch failed (exit 1); attempt 1 of 3" in proc.stderr
    assert proc.stdout.count("ACCELERATE") == 2  # the second attempt ran on both nodes
    assert not (tmp_path / "scontrol.log").read_text().count("requeue")


def test_slurm_script_requeues_a_preempted_run(tmp_path):
    proc = run_slurm_script(tmp_path, "exit 75\n", GPUS_PER_NODE="1")
    assert proc.returncode == 0, proc.stderr
    assert "requeue 77" in (tmp_path / "scontrol.log").read_text()


def test_slurm_script_passes_the_time_limit_signal_on_and_requeues(tmp_path):
    """USR1 (sent 300 s before the time limit) reaches the job step as TERM; the job requeues itself."""
    header = (LAUNCH / "slurm.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@300" in header and "#SBATCH --requeue" in header
    command, env = slurm_script(tmp_path, "sleep 30\n", GPUS_PER_NODE="1")
    script = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(1.5)
        script.send_signal(signal.SIGUSR1)
        assert script.wait(timeout=20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(script.pid, signal.SIGKILL)  # the stand-in's sleep
    assert "signal received: checkpointing and requeueing" in script.stdout.read()
    assert "requeue 77" in (tmp_path / "scontrol.log").read_text()


def test_slurm_log_goes_to_a_directory_that_exists():
    header = [
        line
        for line in (LAUNCH / "slurm.sbatch").read_text().splitlines()
        if line.startswith("#SBATCH --output")
    ]
    assert header == ["#SBATCH --output=%x-%j.out"]


def test_deepspeed_script_runs_one_node_without_ssh(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "deepspeed", "printf DEEPSPEED; printf ' [%s]' \"$@\"; echo\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("HOSTFILE", None)
    proc = subprocess.run(
        ["bash", str(LAUNCH / "deepspeed_launch.sh"), "tiny"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "--hostfile" not in proc.stdout and "[--module] [plait.train] [tiny]" in proc.stdout
