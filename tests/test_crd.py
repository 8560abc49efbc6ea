"""CRD: the NCE loss and the memory against hand computations, the contrast sampler, the
contract (gradients, extras, checkpoints), real runs and an exact --resume."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.crd  # noqa: F401  (registers crd until distillers/__init__ imports it)
from dataset.crd import ContrastLoader, ContrastSampler
from distillers.crd import ContrastMemory, bank_scores, contrast_loss
from helper.core.errors import UserError
from helpers import (PAIRS, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     assert_resume_is_exact, make_distiller, one_epoch, run_student)


def test_contrast_loss_matches_formula():
    p = np.array([[0.5, 0.01, 0.2, 0.003], [2.0, 0.3, 0.001, 0.07]])
    n_data, m = 50, 3
    expected = 0.0
    for row in p:
        expected -= math.log(row[0] / (row[0] + m / n_data + 1e-7))
        for x in row[1:]:
            expected -= math.log((m / n_data) / (x + m / n_data + 1e-7))
    expected /= len(p)
    got = contrast_loss(torch.tensor(p), n_data).item()
    assert abs(got - expected) < 1e-9  # float64 logs, loss ~2: a few ulps (~1e-15), any CPU


def test_bank_scores_both_paths_match_a_loop():
    torch.manual_seed(0)
    bank, v = torch.randn(30, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    idx = torch.randint(0, 30, (4, 6))
    loop = torch.tensor([[float(bank[idx[b, j]] @ v[b]) for j in range(6)] for b in range(4)],
                        dtype=torch.float64)
    # float64 dot products of 8 terms (and their gradients) by matmul, bmm or a loop: a few ulps
    # (~1e-15) whatever the kernels' order, far below allclose's defaults (rtol 1e-5, atol 1e-8)
    assert torch.allclose(bank_scores(bank, v, idx, full=True), loop)
    assert torch.allclose(bank_scores(bank, v, idx, full=False), loop)
    grads = []
    for full in (True, False):
        w = v.clone().requires_grad_()
        bank_scores(bank, w, idx, full=full).pow(2).sum().backward()
        grads.append(w.grad)
    assert torch.allclose(*grads)


def test_memory_sets_z_once_and_updates_banks_with_momentum():
    torch.manual_seed(0)
    n, d, T, m = 20, 6, 0.07, 0.5
    mem = ContrastMemory(d, n, T, m).double()
    stdv = 1 / math.sqrt(d / 3)
    # exact on any CPU: float32 rand is in [0, 1) and float32(2 stdv) = 2 float32(stdv), so the
    # correctly rounded rand * 2 stdv - stdv is within float32(stdv) = 0.70710677 < stdv
    assert mem.memory_s.abs().max() <= stdv and (mem.z < 0).all()
    v_s = torch.nn.functional.normalize(torch.randn(3, d, dtype=torch.float64), dim=1)
    v_t = torch.nn.functional.normalize(torch.randn(3, d, dtype=torch.float64), dim=1)
    index = torch.tensor([2, 7, 11])
    cidx = torch.cat([index[:, None], torch.randint(0, n, (3, 4))], 1)
    bank_s, bank_t = mem.memory_s.clone(), mem.memory_t.clone()
    out_s, out_t = mem(v_s, v_t, index, cidx)
    raw_s = np.array([[math.exp(float(bank_t[cidx[b, j]] @ v_s[b]) / T) for j in range(5)] for b in range(3)])
    raw_t = np.array([[math.exp(float(bank_s[cidx[b, j]] @ v_t[b]) / T) for j in range(5)] for b in range(3)])
    z_s, z_t = raw_s.mean() * n, raw_t.mean() * n
    # float64: exp(x / T) turns a dot product's rounding (~1e-16 of |x| < 1.8) into ~1e-14
    # relative (|x| / T < 25), the norms and momentum update round to a few ulps: all far below
    # allclose's rtol 1e-5, on any CPU
    assert np.allclose(out_s.numpy(), raw_s / z_s) and np.allclose(out_t.numpy(), raw_t / z_t)
    assert np.allclose(mem.z.numpy(), [z_s, z_t])
    for b, i in enumerate(index.tolist()):
        row = bank_s[i] * m + v_s[b] * (1 - m)
        assert torch.allclose(mem.memory_s[i], row / row.norm())
    untouched = [i for i in range(n) if i not in index.tolist()]
    assert torch.equal(mem.memory_t[untouched], bank_t[untouched])
    z = mem.z.clone()
    mem(v_s, v_t, index, cidx)
    assert torch.equal(mem.z, z)  # estimated on the first batch only


def test_sampler_exact_relax_reproducible_and_too_many_negatives():
    targets = torch.tensor([0, 0, 1, 2, 2, 2, 1, 0, 3, 3, 1, 4])
    index = torch.arange(12)
    exact = ContrastSampler(targets, 6, "exact")
    a = exact.sample(index, targets, torch.Generator().manual_seed(1))
    b = exact.sample(index, targets, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (12, 7) and a.dtype == torch.int64
    assert torch.equal(a[:, 0], index)
    for row, c in zip(a.tolist(), targets.tolist()):
        negatives = row[1:]
        assert len(set(negatives)) == 6  # without replacement
        assert all(targets[j] != c for j in negatives)
    relax = ContrastSampler(targets, 6, "relax").sample(index, targets, torch.Generator().manual_seed(1))
    assert torch.equal(targets[relax[:, 0]], targets)
    assert all(targets[j] != c for row, c in zip(relax.tolist(), targets.tolist()) for j in row[1:])
    with pytest.raises(UserError, match="nce_k"):
        ContrastSampler(targets, 10, "exact")  # class 0..2 have only 9 negatives


def test_sampler_draws_every_other_class_sample_uniformly():
    targets = torch.tensor([0] * 3 + [1] * 5 + [2] * 4)
    s = ContrastSampler(targets, 2, "exact")
    index = torch.full((4000,), 4)  # class 1: its block sits between the other two
    negatives = s.sample(index, targets[index], torch.Generator().manual_seed(0))[:, 1:]
    freq = torch.bincount(negatives.flatten(), minlength=12).float() / negatives.numel()
    assert freq[3:8].sum() == 0
    others = torch.cat([freq[:3], freq[8:]])
    # each of the 7 is in a row's 2 negatives with p = 2/7: over 4000 rows its frequency (count /
    # 8000) has sd sqrt(4000 p (1 - p)) / 8000 = 0.0036, so 0.02 is 5.6 sd (a fixed seed besides)
    assert (others - 1 / 7).abs().max() < 0.02


class _Loader:
    def __init__(self, targets, seed=5):
        self.targets_cpu, self.seed, self.rank, self.epoch = targets, seed, 0, 0

    def set_epoch(self, e):
        self.epoch = e

    def __len__(self):
        return 2

    def __iter__(self):
        for i in range(2):
            index = torch.arange(4) + 4 * i
            yield {"images": None, "targets": self.targets_cpu[index], "index": index}


def test_contrast_loader_depends_on_seed_and_epoch_only():
    targets = torch.arange(40) % 5
    def draw(seed, epoch):
        loader = ContrastLoader(_Loader(targets, seed), 8)
        return [b["contrast_index"] for b in _epoch(loader, epoch)]
    assert all(torch.equal(x, y) for x, y in zip(draw(5, 1), draw(5, 1)))
    assert not torch.equal(draw(5, 1)[0], draw(5, 2)[0])
    assert not torch.equal(draw(5, 1)[0], draw(6, 1)[0])


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def _args(**kw):
    base = dict(cls=1.0, div=1.0, beta=0.8, kd_T=4.0, feat_dim=16, nce_k=8, nce_t=0.07, nce_m=0.5)
    base.update(kw)
    return SimpleNamespace(**base)


def _crd(n_data=24):
    student, teacher, d = make_distiller("crd", _args(), "resnet8", "resnet14",
                                         train_size=n_data)
    return d, student, teacher


def _batch(n_data=24):
    targets = torch.arange(n_data) % 3
    index = torch.tensor([0, 5, 10, 17])
    cidx = ContrastSampler(targets, 8).sample(index, targets[index], torch.Generator().manual_seed(0))
    return torch.randn(4, 3, 32, 32), targets[index], index, cidx


def test_gradients_reach_student_and_embeddings_not_teacher():
    distiller, student, teacher = _crd()
    distiller.train()
    images, targets, index, cidx = _batch()
    _, losses = distiller.forward_train(images, targets, index=index, contrast_index=cidx)
    assert set(losses) == {"cls", "kd", "crd"} and torch.isfinite(losses["crd"])
    sum(losses.values()).backward()
    assert_gradients(student, teacher, distiller.embed_s, distiller.embed_t,
                     every_student_param=True, extras_nonzero=False)


def test_extras_are_trained_saved_and_round_trip_bit_exactly():
    distiller, student, _ = _crd()
    assert_extras_trainable(distiller, distiller.embed_s, distiller.embed_t)
    extra_params = sum(p.numel() for p in distiller.trainable_parameters()) - sum(
        p.numel() for p in student.parameters())
    assert extra_params == 2 * (64 * 16 + 16)
    distiller.train()
    images, targets, index, cidx = _batch()
    distiller.forward_train(images, targets, index=index, contrast_index=cidx)  # sets Z, moves banks
    state = {k: v.clone() for k, v in distiller.extra_state_dict().items()}
    assert {"memory.memory_s", "memory.memory_t", "memory.z", "embed_s.linear.weight"} <= set(state)
    assert (state["memory.z"] > 0).all()
    other, _, _ = _crd()
    assert not torch.equal(other.memory.memory_s, state["memory.memory_s"])
    assert_extras_round_trip(state, other)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch_on_cifar100_files(pair_data, tmp_path, teacher, student, teacher_ckpt):
    # 8 negatives: all that cifar100_micro's 10 images (one class twice) offer
    run, summary = one_epoch("crd", teacher_ckpt(teacher), student, pair_data, tmp_path,
                             "--nce_k", "8")
    assert summary["parameters"]["extras"] > 0
    last = torch.load(run / "last.pth", weights_only=True)
    assert (last["extras"]["memory.z"] > 0).all()


def test_resume_restores_memory_banks_exactly(cifar100_small, tmp_path, teacher_ckpt):
    def run(folder, *extra):
        return run_student("crd", "resnet8", cifar100_small, tmp_path / folder, "--deterministic",
                           "--nce_k", "64", *extra, teacher=teacher_ckpt("resnet8"))
    assert_resume_is_exact(run)
