"""The LossVal paper's MLPs (the authors' LossVal_MLP, src/LossVal/LossVal_MLP.py), built layer for layer in the
same order so that a seeded initialisation draws the same numbers.

classification: 5 linear layers of width 100, ReLU, softmax output (probabilities)
regression:     3 linear layers of width 90, Tanh, linear output
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

PAPER_MLP = {
    "classification": {"layers": 5, "hidden_dim": 100, "act_fn": nn.ReLU},
    "regression": {"layers": 3, "hidden_dim": 90, "act_fn": nn.Tanh},
}


def paper_mlp(input_dim: int, output_dim: int, task: str) -> nn.Sequential:
    """MLP of the LossVal paper for `task` ("classification": outputs probabilities; "regression")."""
    if task not in PAPER_MLP:
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    spec = PAPER_MLP[task]
    hidden, act = spec["hidden_dim"], spec["act_fn"]
    layers = OrderedDict()
    layers["input"] = nn.Linear(input_dim, hidden)
    layers["input_acti"] = act()
    for i in range(spec["layers"] - 2):
        layers[f"{i + 1}_lin"] = nn.Linear(hidden, hidden)
        layers[f"{i + 1}_acti"] = act()
    layers["output_lin"] = nn.Linear(hidden, output_dim)
    if task == "classification":
        layers["output"] = nn.Softmax(-1)
    return nn.Sequential(layers)
