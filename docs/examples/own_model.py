"""Your teacher, your student, your data: distillation the darkknowledge way. A teacher trained on
3,000 images teaches a small student that sees only 300 of them (the paper's soft targets as a
regularizer); a student of the same size trained on those 300 with their labels is the baseline.

The same task, in plain PyTorch, is own_model_plain.py next to this file (tests/test_examples.py
runs both and checks that this one is shorter and says the same).
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import darkknowledge as dk
from darkknowledge.data import datasets


def tensors(split, n):  # any (inputs, labels) tensors do; here: MNIST images as flat floats
    d = datasets.get("mnist")(split)
    return d.images[:n].flatten(1).float() / 255, d.labels[:n]


def mlp(width, dropout=0.0):
    return nn.Sequential(
        nn.Linear(784, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, 10)
    )


torch.manual_seed(0)
train = DataLoader(TensorDataset(*tensors("train", 3000)), batch_size=100, shuffle=True)
# the student's data
few = DataLoader(TensorDataset(*tensors("train", 300)), batch_size=50, shuffle=True)
test = DataLoader(TensorDataset(*tensors("test", 2000)), batch_size=500)
teacher, student, baseline = mlp(512, dropout=0.3), mlp(64), mlp(64)
dk.fit(teacher, train, epochs=10, lr=0.1)
dk.distill(student, teacher, few, temperature=4, hard_weight=0.1, epochs=30, lr=0.1)
dk.fit(baseline, few, epochs=30, lr=0.1)
for name, model in (
    ("teacher", teacher),
    ("distilled student", student),
    ("hard-label student", baseline),
):
    print(f"{name}: {dk.evaluate(model, test)['errors']} test errors / 2000")
