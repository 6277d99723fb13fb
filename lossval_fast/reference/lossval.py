"""LossVal, the plain port: the authors' training loop (LossVal_MLP.fit with the "Weighted CE/MSE loss with squared
Sinkhorn" configuration) in pure torch, with the reference Sinkhorn divergence (geomloss' algorithm line by line).
The fast estimator (lossval_fast.LossVal) is tested against this.

Per minibatch (docs/algorithms.md §3): w_b = w[idx]; L_w = Σ_i w_b[i] l_i; S = Sinkhorn(w_b, x_b; 1_M, X_val) with
diameter 1.1 · max |x_b - x_val|; loss = L_w · S². One Adam over the weights and the model; a DataLoader with
shuffle=True (new order every epoch, last partial batch kept).
"""
from __future__ import annotations

import copy

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..models import paper_mlp
from .sinkhorn import sinkhorn_divergence


def weighted_cross_entropy(probs, onehot, weights):
    return torch.sum(weights @ (-torch.sum(onehot * torch.log(probs + 1e-8), dim=1)))


def weighted_mse(pred, target, weights):
    return torch.sum(weights @ torch.sum((target - pred) ** 2, dim=1))


def lossval(X, y, X_val, y_val, *, task="classification", model=None, epochs=30, batch_size=32, lr=0.01,
            blur=0.05, scaling=0.5, random_state=0, dtype=torch.float64):
    """(values, model, history): the final raw data weights (n,), the trained model and the mean loss per epoch.

    X, y, X_val, y_val: tensors (classification y: int64 labels 0..C-1, one-hot encoded here as OpenDataVal does).
    Uses torch's global RNG like the original, inside fork_rng so the caller's state is untouched.
    """
    X, X_val = torch.as_tensor(X, dtype=dtype), torch.as_tensor(X_val, dtype=dtype)
    if task == "classification":
        classes = int(torch.as_tensor(y).max()) + 1
        target = torch.nn.functional.one_hot(torch.as_tensor(y).long(), classes).to(dtype)
    else:
        target = torch.as_tensor(y, dtype=dtype).reshape(len(X), -1)
    with torch.random.fork_rng():
        torch.manual_seed(random_state)
        net = paper_mlp(X.shape[1], target.shape[1], task) if model is None else copy.deepcopy(model)
        net = net.to(dtype)
        weights = torch.nn.Parameter(torch.ones(len(X), dtype=dtype))
        optimizer = torch.optim.Adam([weights, *net.parameters()], lr=lr)
        loader = DataLoader(TensorDataset(torch.arange(len(X)), X, target), batch_size, shuffle=True)
        val_weights = torch.ones(len(X_val), dtype=dtype)
        loss_fn = weighted_cross_entropy if task == "classification" else weighted_mse
        history = []
        for _ in range(int(epochs)):
            total, steps = 0.0, 0
            for idx, xb, yb in loader:
                optimizer.zero_grad()
                w_b = weights.index_select(0, idx)
                train_loss = loss_fn(net(xb), yb, w_b)
                diameter = torch.cdist(xb, X_val, p=2).max().item() * 1.1
                divergence = sinkhorn_divergence(w_b, xb, val_weights, X_val, blur=blur, scaling=scaling,
                                                 diameter=diameter)
                loss = train_loss * divergence.abs() ** 2
                loss.backward()
                optimizer.step()
                total += loss.item()
                steps += 1
            history.append(total / max(steps, 1))
    return weights.detach().clone(), net, history
