"""The task of own_model.py in plain PyTorch: the same data, models and recipe (SGD, momentum
0.9, cosine decay per step, soft targets at T = 4 with the T² factor plus 0.1 × the hard loss)."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from darkknowledge.data import datasets


def tensors(split, n):  # any (inputs, labels) tensors do; here: MNIST images as flat floats
    d = datasets.get("mnist")(split)
    return d.images[:n].flatten(1).float() / 255, d.labels[:n]


def mlp(width, dropout=0.0):
    return nn.Sequential(
        nn.Linear(784, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, 10)
    )


def train(model, loader, epochs, lr, teacher=None, temperature=4.0, hard_weight=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    if teacher is not None:
        teacher.eval()
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            logits = model(x)
            if teacher is None:
                loss = F.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    t = teacher(x)
                soft = F.kl_div(
                    F.log_softmax(logits / temperature, 1),
                    F.log_softmax(t / temperature, 1),
                    reduction="batchmean",
                    log_target=True,
                )
                loss = temperature**2 * soft + hard_weight * F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def errors(model, loader):
    model.eval()
    return sum(int((model(x).argmax(1) != y).sum()) for x, y in loader)


torch.manual_seed(0)
train_loader = DataLoader(TensorDataset(*tensors("train", 3000)), batch_size=100, shuffle=True)
# the student's data
few = DataLoader(TensorDataset(*tensors("train", 300)), batch_size=50, shuffle=True)
test = DataLoader(TensorDataset(*tensors("test", 2000)), batch_size=500)
teacher, student, baseline = mlp(512, dropout=0.3), mlp(64), mlp(64)
train(teacher, train_loader, epochs=10, lr=0.1)
train(student, few, epochs=30, lr=0.1, teacher=teacher)
train(baseline, few, epochs=30, lr=0.1)
for name, model in (
    ("teacher", teacher),
    ("distilled student", student),
    ("hard-label student", baseline),
):
    print(f"{name}: {errors(model, test)} test errors / 2000")
