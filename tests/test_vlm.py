"""Chapter 13's runs: the tiny chain (stage 7's ViT and CNN, CLIP, the caption LM, five captioners), the captioner's
objective and the one-line refusals."""

import pytest
import torch
import torch.nn.functional as F

from llmpath.config import ConfigError, build_config
from llmpath.runs import load_run
from llmpath.vlm.cli import COMMANDS, DescribeRun, describe, smoke
from llmpath.vlm.experiments import (CAPTION_PRESETS, COMPARE_PRESETS, VARIANTS, CaptionRows, CaptionRun, CompareRun,
                                     captioner_loss, captioner_optimizer, captioner_tokenizer, compare, compare_table,
                                     mean_loss, prompt, run_caption)
from llmpath.vlm.model import VLM

TINY = ["--preset=tiny", "--train.progress=false"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return out, compare(build_config(CompareRun, ["--preset=tiny", f"--out={out}"], COMPARE_PRESETS))


def test_the_tiny_chain_trains_every_run_and_tabulates_them(chain):
    out, res = chain
    assert set(VARIANTS) <= set(res) and {"clip", "lm", "vit", "cnn"} <= set(res)
    table = compare_table(res)
    assert table.count("\n") == 1 + len(VARIANTS) and "zh 完全匹配 %" in table
    trained = {k: res[k]["trained_params"] for k in VARIANTS}
    # stage 1 trains the projector alone; a frozen encoder trains less than a scratch one
    assert trained["supervised-frozen"] < trained["supervised-trained"] < trained["scratch-trained"]
    model, _, cfg = load_run(out / "vlm" / "tiny-caption-supervised-trained", topic="vlm")
    assert isinstance(model, VLM) and model.cfg.tiles == 2 and cfg.vision == "supervised"
    # the supervised encoder is stage 7's ViT, unchanged by the captioner's training (it is frozen)
    vit, _, _ = load_run(out / "vit" / "tiny-mnist-5k-vit", topic="vit")
    for k, v in model.vit.state_dict().items():
        assert torch.equal(v, vit.state_dict()[k]), k
    again = compare(build_config(CompareRun, ["--preset=tiny", f"--out={out}"], COMPARE_PRESETS))  # finished: reused
    assert again["supervised-trained"]["seconds"] == res["supervised-trained"]["seconds"]


def test_the_cnn_tower_reads_each_tile_as_stage_7s_cnn_does(chain):
    out, res = chain
    model, _, cfg = load_run(out / "vlm" / "tiny-caption-cnn-trained", topic="vlm")
    cnn, norm, _ = load_run(out / "vit" / "tiny-mnist-5k-cnn", topic="vit")
    assert cfg.vision == "cnn" and model.cfg.tower == "cnn" and not hasattr(model, "vit")
    assert model.cfg.n_image_tokens == 4 and res["cnn-trained"]["trained_params"] < res["scratch-trained"]["params"]
    for k, v in model.cnn.state_dict().items():  # stage 7's weights, frozen
        assert torch.equal(v, cnn.state_dict()[k]), k
    images = cfg.splits()["test"].images[:3]  # (3, 1, 56, 56): 2 x 2 tiles of 28 pixels
    with torch.no_grad():
        tokens = model.vision_features(images)  # (3, 4, hidden)
        x = (images - norm.mean) / norm.std
        for i, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # reading order
            tile = x[:, :, 28 * r:28 * (r + 1), 28 * c:28 * (c + 1)]
            torch.testing.assert_close(tokens[:, i], cnn.features(tile))
            # and the features are what stage 7's classifier reads: its last layer on them gives its logits
            torch.testing.assert_close(cnn.fc2(tokens[:, i]), cnn(tile))


def test_describe_captions_test_scenes_and_draws_the_attention(chain, capsys):
    out, _ = chain
    lines = describe(build_config(DescribeRun, [*TINY, f"--out={out}", "--n=2", "--num_beams=2"], CAPTION_PRESETS))
    assert len(lines) == 4 and lines[0].startswith("zh: ") and lines[2].startswith("en: ")
    assert (out / "vlm" / "tiny-caption-supervised-trained" / "figures" / "attention.png").exists()


def test_the_loss_skips_the_language_tag_and_the_padding(chain):
    out, _ = chain
    model, tok, cfg = load_run(out / "vlm" / "tiny-caption-scratch-trained", topic="vlm")
    scenes = cfg.splits()["train"].subset(range(2))
    rows = CaptionRows(scenes, tok, 4)
    assert len(rows.rows) == 4 and {r[1][1] for r in rows.rows} == {tok.stoi["zh"], tok.stoi["en"]}
    images, ids = rows(0)
    loss = captioner_loss(model, (images, ids))
    # by hand: cross-entropy of the caption tokens only (not the tag after <bos>, not the padding)
    logits, _ = model(images, ids[:, :-1])
    keep = ids[:, 1:] != tok.pad_id
    keep[:, 0] = False
    want = F.cross_entropy(logits[keep], ids[:, 1:][keep])
    torch.testing.assert_close(loss, want)


def test_one_captioner_speaks_both_languages(chain):
    out, _ = chain
    _, tok, cfg = load_run(out / "vlm" / "tiny-caption-supervised-trained", topic="vlm")
    assert prompt(tok, "zh") != prompt(tok, "en") and captioner_tokenizer(cfg.splits()).state_dict() == tok.state_dict()


def test_missing_or_mismatched_sources_are_refused_in_one_line(tmp_path, chain):
    out, _ = chain
    with pytest.raises(ConfigError, match="llmpath vit compare"):
        run_caption(build_config(CaptionRun, [*TINY, f"--out={tmp_path}"], CAPTION_PRESETS))
    with pytest.raises(ConfigError, match="llmpath vlm lm"):
        run_caption(build_config(CaptionRun, [*TINY, f"--out={tmp_path}",
                                              f"--vit_from={out / 'vit' / 'tiny-mnist-5k-vit'}"], CAPTION_PRESETS))
    with pytest.raises(ConfigError, match="1-channel images and these shapes scenes have 3"):
        run_caption(build_config(CaptionRun, [*TINY, f"--out={out}", "--kind=shapes", "--name=shapes"],
                                 CAPTION_PRESETS))
    with pytest.raises(ConfigError, match="does not divide"):
        run_caption(build_config(CaptionRun, [*TINY, f"--out={tmp_path}", "--vision=scratch", "--model.tiles=3",
                                              "--model.decoder.block_size=200",
                                              f"--lm_from={out / 'vlm' / 'tiny-lm'}"], CAPTION_PRESETS))
    with pytest.raises(ConfigError, match="not a captioner"):
        run_caption(build_config(CaptionRun, [*TINY, "--vision=clip", f"--out={out}", "--name=other",
                                              f"--init_from={out / 'vlm' / 'tiny-lm'}"],
                                 CAPTION_PRESETS))
    # the CNN tower: a missing run, a run that is not a CNN, scenes of another channel count
    with pytest.raises(ConfigError, match="llmpath vit compare"):
        run_caption(build_config(CaptionRun, [*TINY, f"--out={tmp_path}", "--vision=cnn"], CAPTION_PRESETS))
    with pytest.raises(ConfigError, match="is not a CNN whose images tile a 56-pixel scene"):
        run_caption(build_config(CaptionRun, [*TINY, f"--out={out}", "--vision=cnn", "--name=not-cnn",
                                              f"--cnn_from={out / 'vit' / 'tiny-mnist-5k-vit'}"], CAPTION_PRESETS))
    with pytest.raises(ConfigError, match="1-channel images and these shapes scenes have 3"):
        run_caption(build_config(CaptionRun, [*TINY, f"--out={out}", "--vision=cnn", "--kind=shapes",
                                              "--name=shapes-cnn"], CAPTION_PRESETS))


def test_every_command_is_declared_and_the_doctor_check_passes():
    assert set(COMMANDS) == {"data", "clip", "lm", "caption", "compare", "describe"}
    assert smoke().startswith("captioner ok")


def test_the_validation_loss_reads_every_row_once(chain):
    out, _ = chain
    model, tok, cfg = load_run(out / "vlm" / "tiny-caption-scratch-trained", topic="vlm")
    rows = CaptionRows(cfg.splits()["val"], tok, 4)
    (whole,) = rows.in_order(len(rows.rows))
    batches = rows.in_order(3)  # uneven batches, each padded to its own longest caption
    assert sum(len(b[1]) for b in batches) == len(rows.rows)
    with torch.no_grad():
        assert abs(mean_loss(model, captioner_loss, batches) - float(captioner_loss(model, whole))) < 1e-5


def test_a_pretrained_vit_can_train_at_a_fraction_of_the_rate(chain):
    out, _ = chain
    cfg = build_config(CaptionRun, [*TINY, f"--out={out}", "--decoder=trained", "--vision_lr=0.1"], CAPTION_PRESETS)
    res = run_caption(cfg)
    assert res["trained_params"] == res["params"]  # the ViT trains too
    model, _, _ = load_run(out / "vlm" / "tiny-caption-supervised-tuned0.1-trained", topic="vlm")
    vit, _, _ = load_run(out / "vit" / "tiny-mnist-5k-vit", topic="vit")
    assert any(not torch.equal(v, vit.state_dict()[k]) for k, v in model.vit.state_dict().items())
    vit_ids = {id(p) for p in model.vit.parameters()}
    for g in captioner_optimizer(model, cfg).param_groups:
        assert g["lr_scale"] == (0.1 if id(g["params"][0]) in vit_ids else 1.0)
        assert len({id(p) in vit_ids for p in g["params"]}) == 1  # a group is all ViT or none of it
