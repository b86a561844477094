"""covip.training: personalized-captioning data, verifiable rewards, judges and GSPO post-training.

Submodules: ``covip.training.data`` (sample schema, the authors' formats, the offline synthetic world),
``covip.training.rewards`` (r_vis, r_caps, degeneration, verification; trl adapter),
``covip.training.judges`` (HTTP / transformers / llama.cpp / lexical MCQA judges), and the GSPO trainer.
Prompts come from ``covip.sdk.prompts`` only.
"""

from covip.training.data import MCQA, Sample, SynthConfig, read_jsonl, synthesize, write_jsonl
from covip.training.judges import Judge, JudgeItem, make_judge
from covip.training.rewards import CoViPReward, caption_sample_reward, is_degenerate, recognition_reward

__all__ = [
    "MCQA",
    "Sample",
    "SynthConfig",
    "synthesize",
    "read_jsonl",
    "write_jsonl",
    "Judge",
    "JudgeItem",
    "make_judge",
    "CoViPReward",
    "caption_sample_reward",
    "recognition_reward",
    "is_degenerate",
]
