"""Hugging Face interop: our VLM <-> `transformers.LlavaForConditionalGeneration` with a ViT vision tower.

    hf = LlavaForConditionalGeneration(config_to_hf(model.cfg))
    load_into_hf(hf, model)                 # our weights into the Llava object
    model = from_hf(hf)                     # a Llava object (ViT tower, Llama text model) -> our VLM (eval mode)

Llava takes any vision tower `AutoModel` can build; with `vision_config` a ViTConfig it is a ViTModel, whose
`hidden_states` are (embeddings, layer 1, ..., layer n), each before the final LayerNorm, as our
`VLM.vision_features` counts them. Llava marks where the image goes with `image_token_id` placeholders in
input_ids (`image_seq_length` of them per image) and overwrites their embeddings with the projected patches: with
the N placeholders first, `input_ids = [image] * N + text` is our prefix + text. The placeholder id must be a row
of the text embedding table, so it is our last id (a caption must not contain it where the two are compared).
The names reuse vit/hf.py and llama/hf.py: the ViT's `vit.` becomes `model.vision_tower.`, the Llama's `model.`
becomes `model.language_model.`, and the projector's fc1/fc2 are `model.multi_modal_projector.linear_1/2`.
ViTModel also has a pooler (a dense layer on [CLS]) that Llava never calls; ours has no such layer, so
`load_into_hf` leaves it as it is and checks that it is the only thing not loaded.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from llmpath.llama import hf as llama_hf
from llmpath.vit import hf as vit_hf
from llmpath.vlm.model import VLM, VLMConfig

_PROJECTOR = {"projector.fc1": "model.multi_modal_projector.linear_1",
              "projector.fc2": "model.multi_modal_projector.linear_2"}
_POOLER = "model.vision_tower.pooler."  # ViTModel's, unused by Llava


def config_to_hf(cfg: VLMConfig, image_token_id: int | None = None) -> Any:
    """A transformers.LlavaConfig with our shapes; the image placeholder is the last id unless given."""
    import transformers

    if cfg.tower != "vit":
        raise ValueError("Llava's vision tower here is a ViT; this model reads images with a CNN (tower='cnn')")
    if cfg.projector != "mlp":
        raise ValueError("Llava's projector is Linear-GELU-Linear; this model has projector='linear'")
    if cfg.tiles != 1:
        raise ValueError("Llava reads one image with its tower; tiles > 1 (LLaVA-NeXT's tiling) has no LlavaConfig")
    if cfg.pixel_mean != 0.0 or cfg.pixel_std != 1.0:
        raise ValueError("Llava takes pixel_values already scaled (its image processor does it); "
                         "compare with pixel_mean=0, pixel_std=1 and scale the images yourself")
    vision = vit_hf.config_dict(cfg.vit)
    text = llama_hf.config_to_hf(cfg.decoder)
    V = cfg.decoder.vocab_size
    return transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=V - 1 if image_token_id is None else image_token_id,
        image_seq_length=cfg.n_image_tokens, vision_feature_layer=cfg.feature_layer,
        vision_feature_select_strategy="default" if cfg.drop_cls else "full", projector_hidden_act="gelu",
        multimodal_projector_bias=True, tie_word_embeddings=cfg.decoder.tie_embeddings)


def config_from_hf(hf_cfg: Any) -> VLMConfig:
    """Our VLMConfig from a LlavaConfig whose vision tower is a ViT and whose text model is a Llama."""
    d = hf_cfg if isinstance(hf_cfg, dict) else hf_cfg.to_dict()
    vision, text = d["vision_config"], d["text_config"]
    if vision.get("model_type") != "vit":
        raise ValueError(f"the vision tower is '{vision.get('model_type')}'; only a 'vit' tower maps to our ViT")
    layer = d.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer={layer}: ours feeds one layer's hidden states, not a concatenation")
    if d.get("projector_hidden_act", "gelu") != "gelu" or not d.get("multimodal_projector_bias", True):
        raise ValueError("ours projects with Linear-GELU-Linear with biases (projector_hidden_act='gelu', "
                         "multimodal_projector_bias=True)")
    strategy = d.get("vision_feature_select_strategy", "default")
    text = {**text, "tie_word_embeddings": d.get("tie_word_embeddings", text.get("tie_word_embeddings", False))}
    return VLMConfig(vit=vit_hf.config_from_hf(vision), decoder=llama_hf.config_from_hf(text), projector="mlp",
                     feature_layer=layer, drop_cls=strategy == "default")


def to_hf_state_dict(model: VLM) -> dict[str, Tensor]:
    """Our weights under LlavaForConditionalGeneration's names (transformers 5), the pooler excepted."""
    out = {}
    for name, t in vit_hf.to_hf_state_dict(model.vit).items():
        out["model.vision_tower." + name.removeprefix("vit.")] = t
    for name, t in model.projector.state_dict().items():
        out[_PROJECTOR["projector." + name.split(".")[0]] + "." + name.split(".")[1]] = t
    for name, t in llama_hf.to_hf_state_dict(model.decoder).items():
        out[name if name == "lm_head.weight" else "model.language_model." + name.removeprefix("model.")] = t
    return out


def from_hf_state_dict(cfg: VLMConfig, sd: dict[str, Tensor]) -> VLM:
    """Our VLM (train mode, as built) holding a Llava state dict; the vision pooler is skipped."""
    vit, text, ours = {}, {}, {}
    for name, t in sd.items():
        if name.startswith(_POOLER):
            continue
        if name.startswith("model.vision_tower."):
            vit["vit." + name.removeprefix("model.vision_tower.")] = t
        elif name.startswith("model.language_model."):
            text["model." + name.removeprefix("model.language_model.")] = t
        elif name == "lm_head.weight":
            text[name] = t
        elif name.startswith("model.multi_modal_projector."):
            layer, p = name.removeprefix("model.multi_modal_projector.").split(".")
            ours[{"linear_1": "projector.fc1", "linear_2": "projector.fc2"}[layer] + "." + p] = t
        else:
            raise ValueError(f"'{name}' has no place in our VLM")
    model = VLM(cfg)
    model.decoder.load_state_dict(llama_hf.from_hf_state_dict(cfg.decoder, text).state_dict())
    ours.update({"vit." + k: t for k, t in vit_hf.from_hf_state_dict(vit).items()})
    missing, unexpected = model.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not k.startswith("decoder.")]  # loaded above
    if missing or unexpected:
        raise ValueError(f"the Llava weights do not match the config: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]}")
    return model


def load_into_hf(hf_model: Any, model: VLM) -> Any:
    """Copy our weights into a LlavaForConditionalGeneration built from config_to_hf(model.cfg); returns it."""
    missing, unexpected = hf_model.load_state_dict(to_hf_state_dict(model), strict=False)
    missing = [k for k in missing if not k.startswith(_POOLER)]
    if missing or unexpected:
        raise ValueError(f"the Llava model does not match: missing {sorted(missing)[:4]}, "
                         f"unexpected {sorted(unexpected)[:4]}")
    return hf_model


def from_hf(hf_model: Any) -> VLM:
    """Our VLM (eval mode) with the weights of a LlavaForConditionalGeneration object (ViT tower, Llama text model)."""
    return from_hf_state_dict(config_from_hf(hf_model.config), hf_model.state_dict()).eval()
