"""Multi-process GSPO through the real ``accelerate launch`` on the CPU: 2 processes over gloo, the tiny Qwen3-VL.

Both bundled accelerate configs are run as shipped (``training/accelerate/multi_gpu.yaml``, plain DDP, and
``training/accelerate/zero2.yaml``, DeepSpeed ZeRO-2) with ``--num_processes 2``, one torch thread per process,
no mocks: accelerate starts two processes with torchrun, ``torch.distributed`` talks gloo, trl/peft train.

* the documented CLI command (``accelerate launch ... -m covip.training.cli train gspo --config tiny-cpu``) does
  one optimizer step: ``global_step`` 1, both ranks scored their own completions (``samples.jsonl`` and
  ``samples.rank1.jsonl``) and saved their RNG state, and the merged checkpoint loads and generates; under
  ZeRO-2 the checkpoint holds one optimizer-state shard per rank;
* the same launch of :func:`covip.training.gspo.train_gspo` with a reward that varies within a group (so the
  gradient is not zero; tiny-cpu's CoViP reward is -1 for every random completion) checks the distribution
  itself: the two ranks generated different completions, every LoRA B matrix moved, and the weights after
  the step are bit-identical on both ranks (the gradients were averaged); the process group is gloo with
  world size 2; under ZeRO-2 the engine is DeepSpeed's stage-2 optimizer with its state partitioned in two.

DeepSpeed runs on the CPU with ``DS_ACCELERATOR=cpu``: without oneCCL (``oneccl_bindings_for_pytorch``) its CPU
accelerator falls back to gloo (``deepspeed/accelerator/cpu_accelerator.py``). Its first use compiles a small
shared-memory op (``deepspeed_shm_comm``, g++, about 50 s, cached in ``~/.cache/torch_extensions``); later
runs take about 25 s.

This file is also the worker ``accelerate launch`` runs for the second kind of test: ``python
test_distributed.py worker OUT [KEY=VALUE ...]``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

REPO = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = REPO / "training" / "accelerate"
# one prompt group (4 completions) per optimizer step, split over 2 processes; 8-token completions
SMALL = ["gspo.per_device_train_batch_size=2", "gspo.max_completion_length=8", "run.torch_threads=1",
         "run.progress=false"]


def _launcher() -> list[str]:
    script = Path(sys.executable).with_name("accelerate")  # the console script next to this interpreter
    return [str(script), "launch"] if script.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(yaml_name: str, *args: str) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file training/accelerate/<yaml_name> --num_processes 2 <args>`` on the CPU."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu",
               CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    cmd = [*_launcher(), "--config_file", str(ACCELERATE_CONFIGS / yaml_name),
           "--num_processes", "2", "--main_process_port", str(_free_port()), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=600)


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"rc {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n" \
                                 f"{proc.stderr[-6000:]}"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _needs(yaml_name: str) -> None:
    if yaml_name == "zero2.yaml":
        pytest.importorskip("deepspeed")


# ----------------------------------------------------------------------------- the files themselves


def test_accelerate_configs_parse_and_leave_precision_to_covip():
    """accelerate's own loader reads both files; precision and the 'auto' values come from the covip config."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    from covip.training.gspo_config import load_config

    ddp = load_config_from_file(str(ACCELERATE_CONFIGS / "multi_gpu.yaml"))
    zero = load_config_from_file(str(ACCELERATE_CONFIGS / "zero2.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU
    assert zero.distributed_type == DistributedType.DEEPSPEED
    ds = zero.deepspeed_config
    assert ds["zero_stage"] == 2 and ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
    assert ds["gradient_accumulation_steps"] == ds["gradient_clipping"] == "auto"  # gspo.* fills them
    for cfg in (ddp, zero):
        # 'no': run.bf16 decides (a 'bf16' here overrode run.bf16=false); 4 processes = the paper's 4 GPUs
        assert cfg.mixed_precision == "no" and cfg.num_processes == 4 and not cfg.use_cpu
    paper = load_config("qwen3vl-8b-paper")
    assert paper.run.bf16 and paper.gspo.gradient_accumulation_steps == 1
    paper.check_batch(4)  # 4 processes x batch 1 x 1 step = one group of 4 per optimizer step


# ----------------------------------------------------------------------------- the documented CLI command


@pytest.mark.parametrize("yaml_name", ["multi_gpu.yaml", "zero2.yaml"])
def test_cli_two_processes_one_step(tmp_path, yaml_name, tiny_vlm_dir):
    _needs(yaml_name)
    out = tmp_path / "run"
    sets = [a for s in SMALL for a in ("--set", s)]
    proc = _launch(yaml_name, "-m", "covip.training.cli", "train", "gspo", "--config", "tiny-cpu",
                   "--output", str(out), "--max-steps", "1", *sets, "--json")
    _check(proc)
    summary = json.loads(proc.stdout)  # rank 0 prints the result, rank 1 nothing
    assert summary["global_step"] == 1 and summary["lora_modules"] == 14

    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and state["max_steps"] == 1
    # every rank saved its RNG state at the step; each scored its own 2 completions of the one group
    assert {p.name for p in (out / "checkpoint-1").glob("rng_state_*.pth")} == {"rng_state_0.pth",
                                                                                "rng_state_1.pth"}
    for name in ("samples.jsonl", "samples.rank1.jsonl"):
        rows = _jsonl(out / "logs" / name)
        assert len(rows) == 2 and {r["step"] for r in rows} == {1}, name
    assert [m["step"] for m in _jsonl(out / "logs" / "metrics.jsonl") if "reward" in m] == [1]
    if yaml_name == "zero2.yaml":  # ZeRO: the optimizer state is partitioned, one shard per rank
        shards = {p.name for p in (out / "checkpoint-1" / "global_step1").glob("*optim_states.pt")}
        assert shards == {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"}

    from covip.sdk import prompts
    from covip.sdk.engines import GenerationConfig, TransformersEngine, TransformersEngineConfig

    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    with TransformersEngine(TransformersEngineConfig(model=str(out / "merged"), device="cpu")) as engine:
        image = next((out / "synth" / "images" / "concepts").glob("*.png"))
        gen = engine.generate(prompts.describe_messages(str(image)), GenerationConfig(max_new_tokens=4))
        assert engine.meaningless and gen.text


# ----------------------------------------------------------------------------- gradients really are shared


@pytest.mark.parametrize(("yaml_name", "bf16"), [("multi_gpu.yaml", False), ("zero2.yaml", False), ("zero2.yaml", True)],
                         ids=["ddp", "zero2", "zero2-bf16"])
def test_two_ranks_share_one_update(tmp_path, yaml_name, bf16, tiny_vlm_dir):
    """zero2-bf16: run.bf16=true (the GPU configs' setting) reaches DeepSpeed as bf16.enabled, the YAML saying 'no'."""
    import torch

    _needs(yaml_name)
    out = tmp_path / "run"
    _check(_launch(yaml_name, str(Path(__file__).resolve()), "worker", str(out), f"run.bf16={str(bf16).lower()}"))
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for r, rec in enumerate(ranks):
        facts = rec["facts"]
        assert facts["rank"] == r and facts["world_size"] == 2 and facts["backend"] == "gloo", facts
        assert facts["global_step"] == 1 and facts["device"].startswith("cpu"), facts
        assert facts["args_bf16"] is bf16 and facts["mixed_precision"] == ("bf16" if bf16 else "no"), facts
        if yaml_name == "zero2.yaml":
            assert facts["distributed_type"] == "DEEPSPEED" and facts["zero_stage"] == 2, facts
            assert facts["optimizer"] == "DeepSpeedZeroOptimizer" and facts["partition_count"] == [2], facts
            assert facts["partition_gradients"] is True and facts["ds_bf16"] is bf16, facts
            assert facts["ds_grad_accum"] == facts["args_grad_accum"] == 1, facts
            assert facts["ds_clipping"] == facts["args_max_grad_norm"], facts
        else:
            assert facts["distributed_type"] == "MULTI_CPU", facts
        assert len(rec["completions"]) == 2  # this rank's share of the group of 4
        before, after = rec["before"], rec["after"]
        lora_b = [n for n in before if "lora_B" in n]
        assert len(lora_b) == 14 and all(not before[n].any() for n in lora_b)
        assert all(after[n].abs().sum() > 0 for n in lora_b), "a LoRA B matrix did not move"
    assert ranks[0]["completions"] != ranks[1]["completions"]  # each rank sampled its own rollouts
    assert ranks[0]["before"].keys() == ranks[1]["before"].keys()
    for name, value in ranks[0]["before"].items():
        assert value.equal(ranks[1]["before"][name]), f"{name} differs between ranks before the step"
    for name, value in ranks[0]["after"].items():
        assert value.equal(ranks[1]["after"][name]), f"{name} differs between ranks after the step"


# ----------------------------------------------------------------------------- the worker (run by accelerate)

_COMPLETIONS: list[list[int]] = []


def _even_token_share(prompts=None, completions=None, completion_ids=None, **_):
    """A reward with variance under a random policy (the share of even token ids), so the gradient is not 0."""
    _COMPLETIONS.extend([int(t) for t in ids] for ids in completion_ids)
    return [sum(t % 2 == 0 for t in ids) / max(1, len(ids)) for ids in completion_ids]


def _facts(args, state, optimizer) -> dict:
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    acc = AcceleratorState()
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's DeepSpeedOptimizerWrapper -> the engine's
    plugin = acc.deepspeed_plugin
    return {
        "rank": dist.get_rank(), "world_size": dist.get_world_size(), "backend": dist.get_backend(),
        "distributed_type": str(acc.distributed_type).split(".")[-1], "device": str(acc.device),
        "global_step": state.global_step, "args_bf16": args.bf16, "mixed_precision": str(acc.mixed_precision),
        "optimizer": type(inner).__name__, "partition_count": getattr(inner, "partition_count", None),
        "partition_gradients": getattr(inner, "partition_gradients", None),
        "zero_stage": plugin.zero_stage if plugin is not None else None,
        "ds_bf16": plugin.deepspeed_config.get("bf16", {}).get("enabled") if plugin is not None else None,
        # zero2.yaml's 'auto' values, as the trainer filled them from covip's gspo.* settings
        "ds_grad_accum": plugin.deepspeed_config.get("gradient_accumulation_steps") if plugin is not None else None,
        "ds_clipping": plugin.deepspeed_config.get("gradient_clipping") if plugin is not None else None,
        "args_grad_accum": args.gradient_accumulation_steps, "args_max_grad_norm": args.max_grad_norm,
    }


def _worker(out: str, *overrides: str) -> None:
    import torch
    from transformers import TrainerCallback

    from covip.training.gspo import train_gspo
    from covip.training.gspo_config import load_config, parse_overrides

    class Record(TrainerCallback):
        before: dict = {}
        after: dict = {}

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.before = {n: p.detach().float().clone() for n, p in model.named_parameters() if "lora_" in n}

        def on_train_end(self, args, state, control, model=None, optimizer=None, **kw):
            self.after = {n: p.detach().float().clone() for n, p in model.named_parameters() if "lora_" in n}
            self.facts = _facts(args, state, optimizer)

    settings = [*SMALL, f"run.output_dir={out}", "gspo.max_steps=1", "run.save_steps=0", "run.merge=false",
                "run.save_adapter=false", "run.tensorboard=false", *overrides]
    config = load_config("tiny-cpu", parse_overrides(settings))
    record = Record()
    train_gspo(config, reward_funcs=[_even_token_share], callbacks=[record])
    torch.save({"facts": record.facts, "before": record.before, "after": record.after,
                "completions": _COMPLETIONS}, Path(out) / f"rank{record.facts['rank']}.pt")


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(*sys.argv[2:])
