"""A toy workload that lives outside lifecycle/: vectors of numbers in, a sign out.

It is what a third-party package ships to add a workload: its task declaration (`TASKS`), its recipe
(`RECIPES`), and the two pieces the edge runtime cannot know (`edge`: how its inputs become feeds, what
its answer is). tests/test_toy_workload.py registers it through entry points only (a dist-info folder on
the path) and runs it train -> export -> quantize -> serve over HTTP with no change under lifecycle/.
"""

from lifecycle.workloads import Recipe
from toy_workload.task import TASK

TASKS = (TASK,)
RECIPES = (
    Recipe("finetune", "vectors", "sign", "toy_workload.recipe:finetune",
           frozenset({"accuracy", "val_accuracy", "train_steps", "params_total"}),
           "a two-layer perceptron on number vectors, trained with Adam (the toy workload)"),
)
