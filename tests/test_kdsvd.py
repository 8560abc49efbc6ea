"""KD-SVD: the loss against an independent numpy computation (both factorisations),
alignment, finite gradients on degenerate maps, gradients, no extras, user errors, one epoch."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillers.kdsvd import align, kdsvd_loss
from helper.core.errors import UserError
from helpers import (PAIRS, assert_gradients, assert_no_extras, make_distiller, one_epoch,
                     one_line_user_error)


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 1.0, "kd_T": 4.0, **kw})


def _vectors(f, k, layout):
    """Per sample: numpy's right singular vectors (D, k) of the map, signed so that the
    entry of largest magnitude is positive, and its first k singular values."""
    out = []
    for x in f:
        c, h, w = x.shape
        matrix = x.reshape(c, h * w).T if layout == "channels" else x.reshape(c * h, w)
        _, s, vt = np.linalg.svd(matrix, full_matrices=False)
        v = vt[:k].T.copy()
        for j in range(v.shape[1]):
            v[:, j] *= np.sign(v[np.argmax(np.abs(v[:, j])), j])
        out.append((v, s[:k]))
    return out


def _numpy_loss(f_s, f_t, k, extra, layout):
    total, previous = 0.0, None
    batch = f_s[0].shape[0]
    for s_map, t_map in zip(f_s, f_t):
        current = []
        for (v_t, s_t), (v_s, _) in zip(_vectors(t_map, k, layout), _vectors(s_map, k + extra, layout)):
            scale = s_t / np.sqrt((s_t ** 2).sum())
            matched = np.zeros_like(v_t)
            for j in range(v_t.shape[1]):
                cosines = [v_s[:, i] @ v_t[:, j] for i in range(v_s.shape[1])]
                best = int(np.argmax(np.abs(cosines)))
                matched[:, j] = v_s[:, best] * np.sign(cosines[best])
            current.append((matched * scale, v_t * scale))
        if previous is not None:
            for (s_top, t_top), (s_bottom, t_bottom) in zip(current, previous):
                for a in range(s_top.shape[0]):
                    for b in range(s_bottom.shape[0]):
                        for j in range(s_top.shape[1]):
                            rbf_s = np.exp(-(s_top[a, j] - s_bottom[b, j]) ** 2 / 8)
                            rbf_t = np.exp(-(t_top[a, j] - t_bottom[b, j]) ** 2 / 8)
                            total += (rbf_s - rbf_t) ** 2
        previous = current
    return total / batch


@pytest.mark.parametrize("layout,k,extra", [("channels", 1, 3), ("channels", 2, 1), ("width", 2, 3)])
def test_loss_matches_an_independent_numpy_computation(layout, k, extra):
    rng = np.random.default_rng(0)
    # three maps per sample: channels 3, 4, 5 (equal in both networks), widths 5, 4, 3
    shapes_s = [(3, 6, 5), (4, 5, 4), (5, 4, 3)]
    shapes_t = [(3, 4, 5), (4, 7, 4), (5, 5, 3)] if layout == "channels" else [
        (6, 6, 5), (2, 5, 4), (3, 4, 3)]
    f_s = [rng.normal(size=(2, *s)) for s in shapes_s]
    f_t = [rng.normal(size=(2, *s)) * 2 for s in shapes_t]
    got = kdsvd_loss([torch.tensor(f) for f in f_s], [torch.tensor(f) for f in f_t], k, extra, layout)
    expected = _numpy_loss(f_s, f_t, k, extra, layout)
    assert expected > 1e-4
    # the SVD runs in float32: relative ~1e-6 on losses of ~1e-2
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_align_picks_the_closest_student_vector_and_its_sign():
    v_t = torch.tensor([[[1.0], [0.0], [0.0]]])                            # (1, D=3, k=1)
    v_s = torch.tensor([[[0.0, -0.9, 0.1], [1.0, 0.1, 0.0], [0.0, 0.4, 0.99]]])  # 3 candidates
    assert align(v_s, v_t).flatten().tolist() == pytest.approx([0.9, -0.1, -0.4])


def test_a_degenerate_sample_gets_no_gradient_instead_of_nan():
    f_t = [torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)]
    f_s = [torch.cat([torch.zeros(1, 3, 4, 4), torch.randn(1, 3, 4, 4)]).requires_grad_(),
           torch.randn(2, 4, 2, 2, requires_grad=True)]
    kdsvd_loss(f_s, f_t, 1, 3).backward()
    grad = f_s[0].grad
    assert torch.isfinite(grad).all()
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() > 0


def test_gradients_reach_the_student_never_the_teacher_and_no_extras():
    student, teacher, d = make_distiller("kdsvd", _args(), "resnet8", "resnet20")
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "kdsvd"}
    losses["kdsvd"].backward()
    assert_gradients(student, teacher)
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    assert_no_extras(d, student)


def test_pairs_of_other_widths_are_user_errors():
    with pytest.raises(UserError, match="kdsvd_over width"):
        make_distiller("kdsvd", _args(), "resnet8", "resnet14x4")     # 16 vs 64 channels
    make_distiller("kdsvd", _args(kdsvd_over="width"), "resnet8", "resnet14x4")  # same widths
    with pytest.raises(UserError, match="equal map sizes"):
        make_distiller("kdsvd", _args(kdsvd_over="width"), "ShuffleV1", "resnet14x4")
    with pytest.raises(UserError, match="kdsvd_k must be 1 or more"):
        make_distiller("kdsvd", _args(kdsvd_k=0))


def test_other_widths_through_the_script_is_one_line(cifar100_small, tmp_path, capsys, teacher_ckpt):
    err = one_line_user_error(capsys, "kdsvd", "resnet8", cifar100_small, tmp_path,
                              teacher=teacher_ckpt("resnet14x4"))
    assert "stage 1 has 16 in resnet8 and 64 in resnet14x4" in err
    assert not (tmp_path / "students").exists()


@pytest.mark.parametrize("teacher,student", PAIRS[:2])  # vgg13 -> vgg8 as wide too; ShuffleV2 not
def test_one_epoch(pair_data, tmp_path, teacher, student, teacher_ckpt):
    one_epoch("kdsvd", teacher_ckpt(teacher), student, pair_data, tmp_path)


def test_one_epoch_of_mdistillers_factorisation(cifar100_tiny, tmp_path, teacher_ckpt):
    one_epoch("kdsvd", teacher_ckpt("resnet14x4"), "resnet8", cifar100_tiny, tmp_path,
              "--kdsvd_over", "width")
