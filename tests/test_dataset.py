"""Tests of dataset/: CIFAR / MNIST loading, TensorLoader sharding, reproducibility, augmentation."""
import gzip
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import dataset  # noqa: E402
from dataset import cifar, mnist  # noqa: E402
from dataset.tensor_loader import RandomCropFlip, TensorLoader, crop_flip, normalize  # noqa: E402
from helper.core.errors import UserError  # noqa: E402

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'
FASHION_SYSTEM = Path('/usr/share/datasets/fashion-mnist')


# ----------------------------------------------------------------------------- fixtures

def _dump(path, obj, bytes_keys):
    if bytes_keys:
        obj = {k.encode(): v for k, v in obj.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'wb') as f:
        pickle.dump(obj, f)


def make_cifar100(root, n_train=250, n_test=100, bytes_keys=True, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / 'cifar-100-python'
    arrays = {}
    for split, n in (('train', n_train), ('test', n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        coarse = rng.integers(0, 20, n).tolist()
        _dump(folder / split, {'filenames': [f'{i}.png' for i in range(n)], 'batch_label': split,
                               'fine_labels': fine, 'coarse_labels': coarse, 'data': data},
              bytes_keys)
        arrays[split] = (data, np.array(fine))
    _dump(folder / 'meta', {'fine_label_names': [f'c{i}' for i in range(100)],
                            'coarse_label_names': [f's{i}' for i in range(20)]}, bytes_keys)
    return arrays


def make_cifar10(root, per_batch=30, n_test=40, bytes_keys=False, seed=1):
    rng = np.random.default_rng(seed)
    folder = root / 'cifar-10-batches-py'
    train_x, train_y = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        _dump(folder / f'data_batch_{i}', {'batch_label': f'b{i}', 'labels': labels, 'data': data,
                                           'filenames': ['x'] * per_batch}, bytes_keys)
        train_x.append(data)
        train_y += labels
    data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n_test).tolist()
    _dump(folder / 'test_batch', {'batch_label': 'test', 'labels': labels, 'data': data,
                                  'filenames': ['x'] * n_test}, bytes_keys)
    _dump(folder / 'batches.meta', {'label_names': [f'c{i}' for i in range(10)],
                                    'num_cases_per_batch': per_batch, 'num_vis': 3072}, bytes_keys)
    return {'train': (np.concatenate(train_x), np.array(train_y)),
            'test': (data, np.array(labels))}


def write_idx(path, array, compress=False):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack('>I', 0x0800 + array.ndim) + struct.pack('>' + 'I' * array.ndim,
                                                                   *array.shape)
    blob = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(str(path) + '.gz', 'wb') as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def make_mnist(root, folder='MNIST', n_train=64, n_test=32, compress=False, seed=2):
    rng = np.random.default_rng(seed)
    raw = root / folder / 'raw'
    out = {}
    for split, prefix, n in (('train', 'train', n_train), ('test', 't10k', n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(raw / f'{prefix}-images-idx3-ubyte', x, compress)
        write_idx(raw / f'{prefix}-labels-idx1-ubyte', y, compress)
        out[split] = (x, y)
    return out


@pytest.fixture
def no_download(monkeypatch):
    """Any torchvision download raises at once: no network is ever attempted."""
    import torchvision.datasets

    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise RuntimeError('offline in tests')

    for cls in ('CIFAR10', 'CIFAR100', 'MNIST', 'FashionMNIST'):
        monkeypatch.setattr(torchvision.datasets, cls, offline)
    return calls


@pytest.fixture
def cifar100_root(tmp_path, no_download):
    arrays = make_cifar100(tmp_path)
    return tmp_path, arrays


def collect(loader):
    batches = list(loader)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]} if batches else None


def denormalize_u8(images, mean, std):
    """Invert normalize(): float batch -> the uint8 values it came from."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return torch.round((images * s + m) * 255).to(torch.uint8)


def coordinate_images(n, h=32, w=32):
    """uint8 (n, 3, h, w): channel 0 = row + 1, channel 1 = column + 1, channel 2 = sample id."""
    x = torch.zeros(n, 3, h, w, dtype=torch.uint8)
    x[:, 0] = (torch.arange(h) + 1).view(h, 1)
    x[:, 1] = (torch.arange(w) + 1).view(1, w)
    x[:, 2] = (torch.arange(n) % 250 + 1).view(n, 1, 1).to(torch.uint8)
    return x


def recover_crop(out, padding):
    """Offsets and flip of each augmented coordinate image, read off its centre pixels."""
    h, w = out.shape[-2:]
    ci, cj = h // 2, w // 2  # always inside the original image for offsets 0..2*padding
    oy = out[:, 0, ci, cj].long() - 1 - ci + padding
    step = out[:, 1, ci, cj + 1].long() - out[:, 1, ci, cj].long()
    flip = step == -1
    assert bool(((step == 1) | flip).all())
    src_col = out[:, 1, ci, cj].long() - 1
    ox = torch.where(flip, src_col - (w - 1 - cj) + padding, src_col - cj + padding)
    return oy, ox, flip


def reference_crop(img, padding, oy, ox, flip):
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=img.dtype)
    padded[:, padding:padding + h, padding:padding + w] = img
    crop = padded[:, oy:oy + h, ox:ox + w]
    return crop.flip(-1) if flip else crop


# ----------------------------------------------------------------------------- loading

def test_names_and_unknown_name():
    assert dataset.DATASET_NAMES == ['cifar10', 'cifar100', 'mnist', 'fashion_mnist', 'imagenet',
                                     'cub200', 'folder']
    with pytest.raises(UserError) as e:
        dataset.build_loaders('cifar1000', '.', 8, 'cpu')
    msg = str(e.value)
    assert 'cifar1000' in msg and all(n in msg for n in dataset.DATASET_NAMES)
    assert '\n' not in msg


def test_cifar100_sizes_labels_and_pixels(cifar100_root):
    root, arrays = cifar100_root
    train, val, info = dataset.build_loaders('cifar100', root, 64, 'cpu')
    assert info == {'num_classes': 100, 'input_size': (3, 32, 32), 'train_size': 250,
                    'val_size': 100}
    x, y, tx, ty, n = dataset.load_arrays('cifar100', root)
    assert n == 100 and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert x.shape == (250, 3, 32, 32) and tx.shape == (100, 3, 32, 32)
    assert np.array_equal(x.reshape(250, -1).numpy(), arrays['train'][0])
    assert np.array_equal(y.numpy(), arrays['train'][1])
    assert np.array_equal(ty.numpy(), arrays['test'][1])
    assert 0 <= int(y.min()) and int(y.max()) <= 99
    # validation batches are the stored pixels, normalised, in order, with their labels
    got = collect(val)
    assert torch.equal(got['index'], torch.arange(100))
    assert torch.equal(got['targets'], torch.from_numpy(arrays['test'][1]))
    assert torch.equal(denormalize_u8(got['images'], cifar.MEAN, cifar.STD), tx)


def test_cifar10_str_keys_five_batches(tmp_path, no_download):
    arrays = make_cifar10(tmp_path, bytes_keys=False)
    train, val, info = dataset.build_loaders('CIFAR-10', tmp_path, 32, 'cpu')
    assert info == {'num_classes': 10, 'input_size': (3, 32, 32), 'train_size': 150,
                    'val_size': 40}
    x, y, tx, ty, _ = dataset.load_arrays('cifar10', tmp_path)
    assert np.array_equal(x.reshape(150, -1).numpy(), arrays['train'][0])
    assert np.array_equal(y.numpy(), arrays['train'][1])
    assert np.array_equal(ty.numpy(), arrays['test'][1])
    assert not no_download  # files present: no download attempted


def test_batches_shapes_dtypes_and_targets(cifar100_root):
    root, arrays = cifar100_root
    train, val, _ = dataset.build_loaders('cifar100', root, 64, torch.device('cpu'))
    assert len(train) == 4 and len(val) == 2
    assert train.num_samples == 250 and train.dataset_size == 250
    labels = torch.from_numpy(arrays['train'][1])
    sizes = []
    for batch in train:
        assert set(batch) == {'images', 'targets', 'index'}
        assert batch['images'].dtype == torch.float32 and batch['images'].shape[1:] == (3, 32, 32)
        assert batch['targets'].dtype == torch.int64 and batch['index'].dtype == torch.int64
        assert batch['images'].device.type == 'cpu'
        assert torch.equal(batch['targets'], labels[batch['index']])
        sizes.append(len(batch['index']))
    assert sizes == [64, 64, 64, 58]


def test_drop_last(cifar100_root):
    root, _ = cifar100_root
    train, val, _ = dataset.build_loaders('cifar100', root, 64, 'cpu', drop_last=True)
    assert len(train) == 3 and [len(b['index']) for b in train] == [64, 64, 64]
    assert len(val) == 2  # validation never drops


@pytest.mark.parametrize('world_size', [1, 2, 3])
def test_training_epoch_covers_every_index_like_distributed_sampler(cifar100_root, world_size):
    root, _ = cifar100_root
    n = 250
    per_rank = []
    for rank in range(world_size):
        train, _, _ = dataset.build_loaders('cifar100', root, 16, 'cpu', seed=3, rank=rank,
                                            world_size=world_size)
        train.set_epoch(5)
        idx = collect(train)['index']
        assert len(idx) == train.num_samples == -(-n // world_size)
        per_rank.append(idx)
    total = per_rank[0].numel() * world_size
    # interleave the ranks back into the padded permutation they were cut from
    padded = torch.stack(per_rank, 1).reshape(-1)
    assert len(padded) == total
    perm = padded[:n]
    assert torch.equal(perm.sort().values, torch.arange(n))  # every index exactly once ...
    assert torch.equal(padded[n:], perm[:total - n])  # ... plus the padding of DistributedSampler
    if world_size == 1:
        assert not torch.equal(perm, torch.arange(n))  # shuffled


def test_two_ranks_split_the_single_process_epoch(cifar100_root):
    """250 samples need no padding over 2 ranks: together the ranks see exactly the samples
    and augmentations of the 1-process epoch (so ranks never repeat each other's draws)."""
    root, _ = cifar100_root
    single, _, _ = dataset.build_loaders('cifar100', root, 16, 'cpu', seed=4)
    single.set_epoch(2)
    ref = collect(single)
    parts = []
    for rank in range(2):
        train, _, _ = dataset.build_loaders('cifar100', root, 16, 'cpu', seed=4, rank=rank,
                                            world_size=2)
        train.set_epoch(2)
        parts.append(collect(train))
    for k in ref:
        both = torch.stack([parts[0][k], parts[1][k]], 1).flatten(0, 1)
        assert torch.equal(both, ref[k])


def test_validation_shards_without_padding(cifar100_root):
    root, _ = cifar100_root
    seen = []
    for rank in range(2):
        _, val, _ = dataset.build_loaders('cifar100', root, 16, 'cpu', rank=rank, world_size=2)
        got = collect(val)['index']
        assert len(got) == val.num_samples == 50
        seen.append(got)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(100))
    # uneven split: 3 ranks over 100 samples -> 34 + 33 + 33, each sample once
    counts = []
    for rank in range(3):
        _, val, _ = dataset.build_loaders('cifar100', root, 16, 'cpu', rank=rank, world_size=3)
        counts.append(len(collect(val)['index']))
    assert counts == [34, 33, 33]


def test_same_seed_and_epoch_reproduce_exactly(cifar100_root):
    root, _ = cifar100_root

    def epoch(seed, ep, batch_size=32):
        train, _, _ = dataset.build_loaders('cifar100', root, batch_size, 'cpu', seed=seed)
        train.set_epoch(ep)
        return collect(train)

    a, b = epoch(7, 3), epoch(7, 3)
    for k in a:
        assert torch.equal(a[k], b[k])
    # the batch size does not change what each position of the epoch sees
    c = epoch(7, 3, batch_size=50)
    for k in a:
        assert torch.equal(a[k], c[k])
    d, e = epoch(7, 4), epoch(8, 3)
    assert not torch.equal(a['index'], d['index'])
    assert not torch.equal(a['index'], e['index'])
    # iterating twice without set_epoch gives the same epoch again (as DistributedSampler)
    train, _, _ = dataset.build_loaders('cifar100', root, 32, 'cpu', seed=7)
    train.set_epoch(3)
    assert torch.equal(collect(train)['images'], collect(train)['images'])


def test_validation_is_not_augmented_or_shuffled(cifar100_root):
    root, _ = cifar100_root
    _, val, _ = dataset.build_loaders('cifar100', root, 32, 'cpu', seed=1)
    val.set_epoch(0)
    a = collect(val)
    val.set_epoch(9)
    b = collect(val)
    assert torch.equal(a['images'], b['images']) and torch.equal(a['index'], torch.arange(100))


# ----------------------------------------------------------------------------- augmentation

def test_crop_offsets_cover_all_positions_and_flip_half():
    n = 6000
    images = coordinate_images(n)
    aug = RandomCropFlip(4, flip=True)
    params = aug.draw(n, torch.Generator().manual_seed(0))
    out = aug.apply(images, params)
    oy, ox, flip = recover_crop(out, 4)
    assert torch.equal(oy, params[:, 0]) and torch.equal(ox, params[:, 1])
    assert torch.equal(flip, params[:, 2].bool())
    positions = set(zip(oy.tolist(), ox.tolist()))
    assert positions == {(i, j) for i in range(9) for j in range(9)}
    counts = torch.bincount(oy * 9 + ox, minlength=81).float()
    # Binomial(6000, 1/81) per position: mean 74, sd 8.6, so +-37 is 4.3 sd; the flip rate's sd
    # is 0.0065, so +-0.04 is 6.2 sd (and the seed is fixed: no CPU can change the draws)
    assert counts.min() > 0.5 * n / 81 and counts.max() < 1.5 * n / 81  # uniform-ish
    assert 0.46 < flip.float().mean().item() < 0.54
    # every sample is exactly its crop, zero padding included
    for i in range(0, n, 97):
        assert torch.equal(out[i], reference_crop(images[i], 4, int(oy[i]), int(ox[i]),
                                                  bool(flip[i])))


def test_crop_flip_matches_torchvision_functional():
    import torchvision.transforms.functional as TF
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g)
    params = RandomCropFlip(4, flip=True).draw(20, g)
    out = crop_flip(images, 4, params)
    for i in range(20):
        ref = TF.crop(TF.pad(images[i], [4]), int(params[i, 0]), int(params[i, 1]), 32, 32)
        if params[i, 2]:
            ref = TF.hflip(ref)
        assert torch.equal(out[i], ref)


def test_centre_crop_without_flip_is_the_image_normalised_exactly():
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=g)
    params = torch.tensor([[4, 4, 0]] * 5)
    out = crop_flip(images, 4, params)
    assert torch.equal(out, images)
    mean = torch.tensor(cifar.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cifar.STD).view(1, 3, 1, 1)
    # bit-identical to torchvision's ToTensor + Normalize
    import torchvision.transforms.functional as TF
    ref = torch.stack([TF.normalize(TF.to_tensor(TF.to_pil_image(im)), cifar.MEAN, cifar.STD)
                       for im in images])
    assert torch.equal(normalize(out, mean, std), ref)


def test_normalisation_values_by_hand():
    for mean, std in ((cifar.MEAN, cifar.STD), mnist.NORMALIZATION['mnist'],
                      mnist.NORMALIZATION['fashion_mnist']):
        c = len(mean)
        values = torch.tensor([0, 1, 128, 255], dtype=torch.uint8)
        images = values.view(1, 1, 1, 4).expand(1, c, 1, 4).contiguous()
        out = normalize(images, torch.tensor(mean).view(1, c, 1, 1),
                        torch.tensor(std).view(1, c, 1, 1))
        for ch in range(c):
            for k, v in enumerate(values.tolist()):
                expected = (v / 255.0 - mean[ch]) / std[ch]
                # float32: the constants, / 255, - and / each round by half an ulp (IEEE,
                # the same on any CPU) on |x| <= 2.82: <= ~6e-7 (2.8e-7 seen)
                assert abs(out[0, ch, 0, k].item() - expected) < 1e-6
    assert cifar.MEAN == (0.5071, 0.4867, 0.4408) and cifar.STD == (0.2675, 0.2565, 0.2761)
    assert mnist.NORMALIZATION == {'mnist': ((0.1307,), (0.3081,)),
                                   'fashion_mnist': ((0.2860,), (0.3530,))}


def test_training_loader_augments_each_sample(tmp_path):
    """Through the loader: the training images are random crops/flips of the right samples."""
    n = 250
    images = coordinate_images(n)
    loader = TensorLoader(images, torch.arange(n), 64, 'cpu', cifar.MEAN, cifar.STD,
                          shuffle=True, transform=RandomCropFlip(4, flip=True), seed=0)
    loader.set_epoch(1)
    got = collect(loader)
    out = denormalize_u8(got['images'], cifar.MEAN, cifar.STD)
    oy, ox, flip = recover_crop(out, 4)
    assert int(oy.min()) >= 0 and int(oy.max()) <= 8 and int(ox.min()) >= 0 and int(ox.max()) <= 8
    assert 0 < flip.float().mean().item() < 1  # 250 fair flips all alike: probability 2^-249
    idx = got['index']
    assert torch.equal(out[:, 2, 16, 16], images[idx, 2, 0, 0])  # the sample it says it is
    for i in range(0, n, 17):
        assert torch.equal(out[i], reference_crop(images[idx[i]], 4, int(oy[i]), int(ox[i]),
                                                  bool(flip[i])))


def test_mnist_jitter_translates_without_flip(tmp_path, no_download):
    make_mnist(tmp_path, n_train=300)
    mean, std = mnist.NORMALIZATION['mnist']
    x, _, _, _, _ = dataset.load_arrays('mnist', tmp_path)
    train, _, info = dataset.build_loaders('mnist', tmp_path, 100, 'cpu')
    assert info['input_size'] == (1, 28, 28)
    got = collect(train)
    assert torch.equal(denormalize_u8(got['images'], mean, std), x[got['index']])  # no jitter

    coords = coordinate_images(300, 28, 28)[:, :2]
    loader = TensorLoader(coords, torch.zeros(300, dtype=torch.int64), 100, 'cpu', (0.5, 0.5),
                          (0.5, 0.5), shuffle=True, transform=RandomCropFlip(2, flip=False))
    out = torch.round((collect(loader)['images'] * 0.5 + 0.5) * 255).to(torch.uint8)
    oy, ox, flip = recover_crop(out, 2)
    assert not flip.any()
    assert set(zip(oy.tolist(), ox.tolist())) == {(i, j) for i in range(5) for j in range(5)}

    train, _, _ = dataset.build_loaders('mnist', tmp_path, 100, 'cpu', jitter=2)
    assert isinstance(train.transform, RandomCropFlip) and train.transform.padding == 2
    assert not train.transform.flip
    with pytest.raises(UserError, match='jitter'):
        dataset.build_loaders('cifar100', tmp_path, 100, 'cpu', jitter=2)


# ----------------------------------------------------------------------------- real data

def _pixel_stats(images):
    counts = torch.zeros(256, dtype=torch.float64)
    for chunk in images.reshape(-1).split(4_000_000):
        counts += torch.bincount(chunk.long(), minlength=256).double()
    v = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * v).sum() / counts.sum()
    std = ((counts * (v - mean) ** 2).sum() / counts.sum()).sqrt()
    return mean.item(), std.item()


@pytest.mark.skipif(not (SHARED_DATA / 'MNIST' / 'raw').is_dir(), reason='no shared MNIST')
def test_real_mnist(no_download):
    train, val, info = dataset.build_loaders('mnist', SHARED_DATA, 1000, 'cpu')
    assert info == {'num_classes': 10, 'input_size': (1, 28, 28), 'train_size': 60000,
                    'val_size': 10000}
    x, y, tx, ty, _ = dataset.load_arrays('mnist', SHARED_DATA)
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ty[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(y).tolist()[:2] == [5923, 6742]
    mean, std = _pixel_stats(x)
    # float64 over exact bin counts (~1e-15); the constants are the true 0.13066 and 0.30811
    # rounded to 4 decimals
    assert abs(mean - 0.1307) < 1e-4 and abs(std - 0.3081) < 1e-4
    assert len(train) == 60 and len(val) == 10


@pytest.mark.skipif(not FASHION_SYSTEM.is_dir(), reason='apt package dataset-fashion-mnist absent')
def test_real_fashion_mnist_from_system_folder(tmp_path, no_download):
    train, val, info = dataset.build_loaders('fashion_mnist', tmp_path / 'none', 1000, 'cpu')
    assert info['train_size'] == 60000 and info['val_size'] == 10000
    assert train.targets[0].item() == 9 and val.targets[0].item() == 9
    mean, std = _pixel_stats(train.images)
    # float64 over exact bin counts; the constants are 0.28604 and 0.35302 rounded to 4 decimals
    assert abs(mean - 0.2860) < 1e-4 and abs(std - 0.3530) < 1e-4
    assert not (tmp_path / 'none').exists() and not no_download


def test_mnist_gz_files_load_like_plain(tmp_path, no_download):
    plain = make_mnist(tmp_path / 'a', compress=False)
    make_mnist(tmp_path / 'b', compress=True)
    a = dataset.load_arrays('mnist', tmp_path / 'a')
    b = dataset.load_arrays('mnist', tmp_path / 'b')
    for u, v in zip(a[:4], b[:4]):
        assert torch.equal(u, v)
    assert np.array_equal(a[0][:, 0].numpy(), plain['train'][0])
    assert a[1].dtype == torch.int64 and np.array_equal(a[1].numpy(), plain['train'][1])
    make_mnist(tmp_path / 'c', folder='FashionMNIST')
    _, _, info = dataset.build_loaders('fashion_mnist', tmp_path / 'c', 16, 'cpu')
    assert info['train_size'] == 64 and info['val_size'] == 32


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize('name,folder,layout', [
    ('cifar100', 'cifar-100-python', 'train, test, meta'),
    ('cifar10', 'cifar-10-batches-py', 'data_batch_1'),
    ('mnist', 'MNIST/raw', 'train-images-idx3-ubyte'),
    ('fashion_mnist', 'FashionMNIST/raw', 't10k-labels-idx1-ubyte'),
])
def test_missing_data_names_folder_and_layout(tmp_path, no_download, monkeypatch, name, folder,
                                              layout):
    monkeypatch.setitem(mnist._SPECS['fashion_mnist'], 'system', [])  # ignore the apt package
    root = tmp_path / 'data'
    with pytest.raises(UserError) as e:
        dataset.build_loaders(name, root, 8, 'cpu')
    msg = str(e.value)
    assert str(root / folder) in msg and layout in msg and "torchvision's layout" in msg
    assert 'offline in tests' in msg and '--data_folder' in msg and '\n' not in msg
    assert len(no_download) == 1  # the download was tried, and failed without network
    assert not root.exists()  # nothing half-downloaded left behind


def test_partial_cifar_folder_is_not_valid(tmp_path, no_download):
    make_cifar100(tmp_path)
    (tmp_path / 'cifar-100-python' / 'meta').unlink()
    with pytest.raises(UserError, match='cifar-100-python'):
        dataset.build_loaders('cifar100', tmp_path, 8, 'cpu')
    assert tmp_path.exists()  # the user's folder is left alone


def test_corrupt_cifar_file_names_it(tmp_path, no_download):
    make_cifar100(tmp_path)
    path = tmp_path / 'cifar-100-python' / 'train'
    path.write_bytes(path.read_bytes()[:5000])  # a truncated download
    with pytest.raises(UserError) as e:
        dataset.build_loaders('cifar100', tmp_path, 8, 'cpu')
    assert str(path) in str(e.value)


def test_download_is_verified(tmp_path, monkeypatch):
    """A (fake) torchvision download that writes the files is used; one that writes a broken
    file is reported with that file's name."""
    import torchvision.datasets

    def fake_download(broken):
        def cls(root, train, download):
            assert download
            make_cifar100(Path(root))
            if broken:
                (Path(root) / 'cifar-100-python' / 'test').write_bytes(b'not a pickle')
        return cls

    monkeypatch.setattr(torchvision.datasets, 'CIFAR100', fake_download(False))
    _, _, info = dataset.build_loaders('cifar100', tmp_path / 'ok', 8, 'cpu')
    assert info['train_size'] == 250

    monkeypatch.setattr(torchvision.datasets, 'CIFAR100', fake_download(True))
    with pytest.raises(UserError) as e:
        dataset.build_loaders('cifar100', tmp_path / 'bad', 8, 'cpu')
    assert str(tmp_path / 'bad' / 'cifar-100-python' / 'test') in str(e.value)


@pytest.mark.parametrize('name,title,make,folder,missing,hint', [
    ('cifar100', 'CIFAR-100', make_cifar100, 'cifar-100-python', 'train, test, meta',
     '; download it or pass --data_folder'),
    ('mnist', 'MNIST', make_mnist, 'MNIST/raw', 'files', '; download it or pass --data_folder'),
    ('fashion_mnist', 'Fashion-MNIST', lambda root: make_mnist(root, folder='FashionMNIST'),
     'FashionMNIST/raw', 'files',
     '; download it, apt-get install dataset-fashion-mnist, or pass --data_folder'),
])
def test_one_torchvision_download_for_every_layout(tmp_path, monkeypatch, name, title, make,
                                                   folder, missing, hint):
    """dataset/torchvision_download.py serves CIFAR and MNIST alike, each with its own hint:
    no download when refused, the train and test splits when allowed, what is still missing
    after a download that wrote nothing, and the user's own folder kept when it fails."""
    import torchvision.datasets
    monkeypatch.setitem(mnist._SPECS['fashion_mnist'], 'system', [])  # ignore the apt package
    calls = []

    def fake(writes=True, fails=False):
        def cls(root, train, download):
            calls.append((train, download))
            if fails:
                raise OSError('disk full')
            if writes:
                make(Path(root))
        return cls

    tv_class = title.replace('-', '')
    root = tmp_path / 'data'
    monkeypatch.setattr(torchvision.datasets, tv_class, fake())
    with pytest.raises(UserError) as e:
        dataset.load_arrays(name, root, download=False)
    msg = str(e.value)
    assert msg.startswith(f"{title} not found in {root / folder}") and msg.endswith(f"){hint}")
    assert 'download failed' not in msg and not calls and not root.exists()

    x, _, tx, _, _ = dataset.load_arrays(name, root)
    assert calls == [(True, True), (False, True)] and len(x) and len(tx)

    calls.clear()
    monkeypatch.setattr(torchvision.datasets, tv_class, fake(writes=False))
    with pytest.raises(UserError) as e:
        dataset.load_arrays(name, tmp_path / 'empty')
    assert str(e.value).endswith(f"the download failed: {missing} still missing after it{hint}")
    assert len(calls) == 2

    mine = tmp_path / 'mine'
    mine.mkdir()
    monkeypatch.setattr(torchvision.datasets, tv_class, fake(fails=True))
    with pytest.raises(UserError) as e:
        dataset.load_arrays(name, mine)
    assert str(e.value).endswith(f"the download failed: OSError: disk full{hint}")
    assert mine.is_dir()  # the user's folder is left alone


@pytest.mark.parametrize('damage', ['magic', 'truncated', 'gzip'])
def test_corrupt_idx_file_names_it(tmp_path, no_download, damage):
    make_mnist(tmp_path, compress=(damage == 'gzip'))
    raw = tmp_path / 'MNIST' / 'raw'
    if damage == 'magic':
        path = raw / 'train-labels-idx1-ubyte'
        data = bytearray(path.read_bytes())
        data[3] = 3
        path.write_bytes(bytes(data))
    elif damage == 'truncated':
        path = raw / 't10k-images-idx3-ubyte'
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path = raw / 'train-images-idx3-ubyte.gz'
        path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(UserError) as e:
        dataset.build_loaders('mnist', tmp_path, 8, 'cpu')
    assert str(path) in str(e.value) and '\n' not in str(e.value)


def test_bad_arguments(cifar100_root):
    root, _ = cifar100_root
    with pytest.raises(UserError):
        dataset.build_loaders('cifar100', root, 0, 'cpu')
    with pytest.raises(UserError):
        dataset.build_loaders('cifar100', root, 8, 'cpu', rank=2, world_size=2)


# ----------------------------------------------------------------------------- process group

def _two_ranks(rank, init_file, root, missing_root, results):
    import torch.distributed as dist
    torch.set_num_threads(1)
    import torchvision.datasets

    def offline(*a, **k):
        raise RuntimeError('offline in tests')
    torchvision.datasets.CIFAR100 = offline
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        train, val, _ = dataset.build_loaders('cifar100', root, 32, 'cpu', seed=1, rank=rank,
                                              world_size=2)
        torch.save({'train': collect(train)['index'], 'val': collect(val)['index']},
                   f'{results}.{rank}')
        try:  # an error on every rank, and no rank left waiting at the barrier
            dataset.build_loaders('cifar100', missing_root, 32, 'cpu', rank=rank, world_size=2)
        except UserError as e:
            Path(f'{results}.{rank}.err').write_text(str(e))
    finally:
        dist.destroy_process_group()


def test_process_group_rank0_loads_first(cifar100_root, tmp_path):
    root, _ = cifar100_root
    import torch.multiprocessing as mp
    results = tmp_path / 'res'
    mp.spawn(_two_ranks, args=(str(tmp_path / 'init'), root, tmp_path / 'missing', str(results)),
             nprocs=2, join=True)
    got = [torch.load(f'{results}.{r}') for r in range(2)]
    train = torch.cat([g['train'] for g in got])
    assert len(train) == 250 and torch.equal(train.sort().values, torch.arange(250))
    assert torch.equal(torch.cat([g['val'] for g in got]).sort().values, torch.arange(100))
    for r in range(2):
        assert 'cifar-100-python' in Path(f'{results}.{r}.err').read_text()
