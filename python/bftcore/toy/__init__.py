"""The toy world: bftcore's embedded default (docs/toy-world.md).

A task language with harmful and benign families, a byte-level BPE tokenizer, and base and aligned
models of the Llama and Qwen2 architectures trained by bftcore's own loop, deterministic from a
seed and cached under $BFTCORE_CACHE. Small enough for a CPU, real enough that shallow alignment
appears in it by itself.
"""

from bftcore.toy.build import ModelShape, SafetyData, ToySettings, ToyWorld, toy_world
from bftcore.toy.check import check_world, measure, steps_of, threshold_checks
from bftcore.toy.language import Task, TaskPrompt, World

__all__ = [
    "ModelShape", "SafetyData", "Task", "TaskPrompt", "ToySettings", "ToyWorld", "World",
    "check_world", "measure", "steps_of", "threshold_checks", "toy_world",
]
