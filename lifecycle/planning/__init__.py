"""Compute planning for training stages (`lifecycle plan`): the memory model of one step (`memory`)
and the plan of a pipeline's training stages, calibrated on this machine (`plan`)."""

from lifecycle.planning.memory import Shape, advise, memory, training_flops
from lifecycle.planning.plan import StagePlan, plan, render

__all__ = ["Shape", "StagePlan", "advise", "memory", "plan", "render", "training_flops"]
