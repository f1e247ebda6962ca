"""Stage 7 through its data and CLI: the image sets, the split, augmentation that keeps shapes and labels (a 90-degree
rotation is exactly rot90, a shift moves every pixel by its offset), a folder of PNGs, tiny training that load_run
rebuilds, the comparison, figures, the export transformers reads, one-line errors. Model tests: test_vit_model.py."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmpath.cli import main
from llmpath.config import ConfigError
from llmpath.data.corpora import DataError
from llmpath.runs import load_run
from llmpath.vit import cli
from llmpath.vit.cnn import CNN
from llmpath.vit.data import (ImageBatches, fraction, load_folder, load_images, pixel_stats, random_rotate,
                              random_shift, rotate, split_images)
from llmpath.vit.experiments import Normalizer, predict
from llmpath.vit.model import ViT
from helpers import one_line_error


def vit(*args) -> int:
    return main(["vit", *args])


# -------------------------------------------------------------------------------- data

def test_the_two_image_sets():
    mnist = load_images("mnist-5k")
    assert mnist.images.shape == (5000, 1, 28, 28) and mnist.images.dtype == torch.float32
    assert torch.bincount(mnist.labels).tolist() == [500] * 10
    assert 0 <= float(mnist.images.min()) and float(mnist.images.max()) == 1.0
    digits = load_images("digits")
    assert digits.images.shape == (1797, 1, 8, 8) and float(digits.images.max()) == 1.0
    assert load_images("digits", size=16).images.shape == (1797, 1, 16, 16)


def test_split_is_stratified_disjoint_and_fixed():
    ds = load_images("digits")
    tr, va, te = split_images(ds, seed=0)
    assert len(tr) + len(va) + len(te) == len(ds)
    key = lambda s: {tuple(x.flatten().tolist()) for x in s.images}  # noqa: E731
    assert not (key(tr) & key(te)) or len(key(tr) & key(te)) < 5  # digits has a few duplicate images, no more
    counts = torch.bincount(te.labels, minlength=10).numpy()
    assert np.all(np.abs(counts / counts.sum() - 0.1) < 0.02)
    assert torch.equal(split_images(ds, seed=0)[2].labels, te.labels)
    half = fraction(tr, 0.5)
    assert abs(len(half) - len(tr) / 2) <= 10 and set(torch.bincount(half.labels).tolist()) <= set(range(50, 100))


def test_rotation_by_90_degrees_is_rot90_and_by_0_is_the_identity():
    x = torch.rand(3, 2, 6, 6)
    torch.testing.assert_close(rotate(x, torch.zeros(3)), x, atol=1e-6, rtol=0)
    # counter-clockwise on screen (row 0 at the top): torch.rot90 over (H, W) turns the same way
    torch.testing.assert_close(rotate(x, torch.full((3,), 90.0)), torch.rot90(x, 1, (2, 3)), atol=1e-5, rtol=0)


def test_shift_moves_every_pixel_by_its_offset_and_fills_with_zeros():
    x = torch.zeros(50, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0  # one bright pixel in the middle
    y = random_shift(x, 2, np.random.default_rng(0))
    assert y.shape == x.shape and torch.all(y.sum((1, 2, 3)) == 1)  # moved, never lost (2 < distance to the edge)
    pos = y[:, 0].flatten(1).argmax(1)
    dy, dx = pos // 9 - 4, pos % 9 - 4
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and len(set(zip(dy.tolist(), dx.tolist()))) > 10
    wide = torch.ones(1, 1, 5, 5)
    assert float(random_shift(wide, 2, np.random.default_rng(3)).sum()) <= 25  # zeros come in at the border


def test_augmented_batches_keep_shapes_and_labels_and_are_fixed_by_the_step():
    ds = load_images("digits")
    stats = pixel_stats(ds)
    plain = ImageBatches(ds, 32, stats, seed=1)
    aug = ImageBatches(ds, 32, stats, seed=1, shift=1, degrees=15)
    (xp, yp), (xa, ya) = plain(5), aug(5)
    assert xa.shape == xp.shape == (32, 1, 8, 8) and torch.equal(ya, yp)
    assert not torch.allclose(xa, xp)
    torch.testing.assert_close(aug(5)[0], xa)  # batch i is a pure function of i
    assert random_rotate(ds.images[:4], 10, np.random.default_rng(0)).shape == (4, 1, 8, 8)


def test_a_folder_of_pngs_is_an_image_set(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(6):
            a = (rng.random((10, 12)) * 255).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / name / f"{i}.png")
    ds = load_folder(tmp_path)
    assert ds.classes == ["cat", "dog"] and ds.images.shape == (12, 1, 10, 12) and ds.labels.tolist() == [0] * 6 + [1] * 6
    Image.fromarray(np.zeros((7, 7, 3), np.uint8) + np.array([255, 0, 0], np.uint8)).save(tmp_path / "dog" / "red.png")
    with pytest.raises(DataError, match="different sizes; give --image_size"):
        load_folder(tmp_path)
    ds = load_folder(tmp_path, size=8)
    assert ds.images.shape == (13, 3, 8, 8)  # one image has colour: all RGB
    (tmp_path / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        load_folder(tmp_path, size=8)
    with pytest.raises(DataError, match="at least 2 sub-folders"):
        load_folder(tmp_path / "cat")


# --------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny comparison on digits (four short runs), shared by the tests below."""
    out = tmp_path_factory.mktemp("runs")
    assert vit("compare", "--preset=tiny", "--datasets=digits", f"--out={out}") == 0
    return out


def test_compare_trains_four_runs_that_load_run_rebuilds(runs):
    res = json.loads((runs / "vit" / "tiny-compare" / "results.json").read_text())
    assert set(res["digits"]) == {"vit", "cnn", "vit-time", "cnn-time"}
    model, norm, cfg = load_run(runs / "vit" / "tiny-digits-vit")
    assert isinstance(model, ViT) and isinstance(norm, Normalizer) and cfg.model.vit.patch_size == 2
    cnn, _, _ = load_run(runs / "vit" / "tiny-digits-cnn")
    assert isinstance(cnn, CNN)
    _, _, test = split_images(load_images("digits"))
    pred = predict(model, test.images, norm).numpy()
    saved = np.load(runs / "vit" / "tiny-digits-vit" / "test_predictions.npz")
    assert np.array_equal(pred, saved["pred"]) and res["digits"]["vit"]["test_acc"] == pytest.approx(np.mean(pred == saved["label"]))
    assert res["digits"]["vit"]["steps"] == 6 and res["digits"]["cnn-time"]["budget_s"] == 1
    assert "ViT，相同时间" in cli.compare_table(res)


def test_a_finished_run_is_reused(runs):
    best = runs / "vit" / "tiny-digits-vit" / "ckpt" / "best.pt"
    before = best.stat().st_mtime_ns
    assert vit("train", "--preset=tiny", "--name=tiny-digits-vit", f"--out={runs}") == 0
    assert best.stat().st_mtime_ns == before


def test_figures_and_export(runs, tmp_path):
    assert vit("figures", "--preset=tiny", "--data=digits", f"--out={runs}") == 0
    fig_dir = runs / "vit" / "tiny-digits-vit" / "figures"
    for name in ("patches", "position_similarity", "rollout", "cnn_filters", "misclassified", "confusion_vit"):
        assert (fig_dir / f"{name}.png").stat().st_size > 3_000, name
    transformers = pytest.importorskip("transformers")
    assert vit("export", "--preset=tiny", "--data=digits", f"--out={runs}", f"--dir={tmp_path / 'hf'}") == 0
    model, norm, _ = load_run(runs / "vit" / "tiny-digits-vit")
    hf = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    x = norm(load_images("digits").images[:5])
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, model(x), atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_one_line_before_any_work(tmp_path, capsys):
    assert vit("train", "--preset=tiny", "--data=mnist-5k", "--patch_size=5", f"--out={tmp_path}") == 2
    assert "--patch_size=5 does not divide --image_size=28" in one_line_error(capsys)
    assert vit("train", "--preset=tiny", "--data=cifar", f"--out={tmp_path}") == 2
    assert "unknown image set 'cifar'; choose one of: mnist-5k, digits" in one_line_error(capsys)
    assert vit("curve", "--preset=tiny", "--fractions=0,2", f"--out={tmp_path}") == 2
    assert "--fractions expects numbers in (0, 1]" in one_line_error(capsys)
    assert vit("figures", "--preset=tiny", f"--out={tmp_path}") == 2
    assert "llmpath vit compare --preset=tiny" in one_line_error(capsys)
    assert not (tmp_path / "vit").exists()


def test_doctor_smoke():
    assert "ok" in cli.smoke()


def test_ablation_variants_are_one_change_each():
    cfg = cli.AblationRun(preset="small", seeds="0,1")
    rows = cli.ablation_configs(cfg)
    default = [runs for _, label, runs in rows if "默认" in label]
    assert len({tuple(c.name for c in runs) for runs in default}) == 1  # the default is one set of runs, trained once
    assert [c.seed for c in default[0]] == [0, 1] and default[0][1].name.endswith("default-seed1")
    changed = {label: runs[0] for _, label, runs in rows if "默认" not in label}
    assert changed["4×4 像素的图块（7×7 = 49 个词元）"].model.vit.patch_size == 4
    assert changed["固定二维正弦-余弦"].model.vit.pos == "sincos2d" and changed["6 层"].model.vit.n_layer == 6
    with pytest.raises(ConfigError, match="--seeds expects"):
        cli.ablation_configs(cli.AblationRun(preset="small", seeds="a"))
    table = cli.ablation_table([{"group": "g", "label": "l", "params": 1, "seconds": 2.0, "val_acc": 0.9,
                                 "val_acc_std": 0.01, "val_accs": [0.89, 0.91]}])
    assert "0.9000 ± 0.0100" in table and "2 个种子" in table


# ------------------------------------------------------------------------ the exercises

def test_exercise_7_1_parameter_count_and_patch_size():
    from llmpath.common import count_params
    from llmpath.vit.model import ViTConfig

    small = ViTConfig(n_layer=4, n_head=4, n_embd=64, n_ff=128)
    per_layer = 4 * (64 * 64 + 64) + (64 * 128 + 128 + 128 * 64 + 64) + 2 * 2 * 64
    assert per_layer == 33_472
    assert count_params(ViT(small)) == 50 * 64 + 64 + 17 * 64 + 4 * per_layer + 128 + 650 == 139_018
    four = ViT(ViTConfig(n_layer=4, n_head=4, n_embd=64, n_ff=128, patch_size=4))
    assert count_params(four) == 139_018 and four.pos.shape == (1, 50, 64)  # embedding and positions swap sizes
    assert round(50 ** 2 / 17 ** 2, 1) == 8.7


def test_exercise_7_2_no_positions_no_order():
    from llmpath.vit.model import ViTConfig, patchify, unpatchify

    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    shuffled = unpatchify(patchify(x, 7)[:, perm], 7, 1)
    for pool in ("mean", "cls"):
        m = ViT(ViTConfig(n_layer=2, n_head=2, n_embd=16, n_ff=32, pos="none", pool=pool)).eval()
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
            torch.testing.assert_close(m(shuffled), m(x), atol=1e-5, rtol=1e-5)


def test_exercise_7_3_the_receptive_field_of_the_cnn():
    from llmpath.vit.cnn import CNNConfig

    torch.manual_seed(0)
    cnn = CNN(CNNConfig(c1=4, c2=4, hidden=8))
    x = torch.randn(1, 1, 28, 28, requires_grad=True)
    # max-pooling and ReLU pass the gradient to one input (or none): average-pool instead, without ReLU, so that
    # every pixel the unit depends on gets a non-zero gradient
    a2 = cnn.conv2(F.avg_pool2d(cnn.conv1(x), 2))
    F.avg_pool2d(a2, 2)[0, :, 3, 3].sum().backward()  # the centre of the final 7x7 map, every channel
    rows, cols = (x.grad[0, 0].abs() > 0).nonzero().unbind(1)
    assert (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) == (16, 16)


def test_exercise_7_4_cost_per_image():
    from torch.utils.flop_counter import FlopCounterMode

    from llmpath.vit.cnn import CNNConfig
    from llmpath.vit.model import ViTConfig

    def macs(model, side):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, 1, side, side))
        return counter.get_total_flops() // 2

    assert macs(CNN(CNNConfig(c1=16, c2=32, hidden=80)), 28) == 2_948_640
    assert macs(CNN(CNNConfig(image_size=8, c1=16, c2=32, hidden=80)), 8) == 241_440
    vit28 = ViT(ViTConfig(n_layer=4, n_head=4, n_embd=64, n_ff=128, sdpa=False))
    vit8 = ViT(ViTConfig(image_size=8, patch_size=2, n_layer=4, n_head=4, n_embd=64, n_ff=128, sdpa=False))
    assert macs(vit28, 28) == 16 * 49 * 64 + 17 * 4 * 32_768 + 4 * 2 * 17 ** 2 * 64 + 640 == 2_427_008
    assert macs(vit8, 8) == 2_380_928
