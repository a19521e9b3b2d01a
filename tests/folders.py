"""Model folders as each ecosystem writes them, from their formats (transformers, diffusers and timm
cannot be installed here): shard naming, index JSON layout, config keys and JSON style.

- transformers: shards `model-0000K-of-0000N.safetensors` (metadata {"format": "pt"}) or
  `pytorch_model-0000K-of-0000N.bin` (torch.save), `*.index.json` written as
  json.dumps(index, indent=2, sort_keys=True) + "\\n" with metadata.total_size the sum of tensor bytes;
  config.json and preprocessor_config.json as json.dumps(d, indent=2, sort_keys=True) + "\\n".
- diffusers: a folder per component (unet/, vae/, text_encoder/, scheduler/) with
  `diffusion_pytorch_model.safetensors` and config.json (same JSON style), model_index.json on top.
- timm (push_to_hub): model.safetensors and config.json written by json.dump(cfg, f, indent=4),
  keys in insertion order, pretrained_cfg with input_size, mean, std, first_conv.
"""
import json
import os

import numpy as np

import reference


def rng(seed):
    return np.random.default_rng(seed)


def f32(g, *shape):
    return g.standard_normal(shape).astype(np.float32)


def dump_hf(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def shard_names(prefix, ext, n):
    return [f"{prefix}-{k + 1:05d}-of-{n:05d}.{ext}" for k in range(n)]


def write_shards(folder, groups, fmt="safetensors", total="tensors"):
    """groups: list of {name: array} (one per shard). Writes shards and their index; returns the
    index dict. total: "tensors" (transformers) or "files" (some other writers)."""
    import torch
    n = len(groups)
    names = shard_names("model" if fmt == "safetensors" else "pytorch_model",
                        "safetensors" if fmt == "safetensors" else "bin", n)
    weight_map, size = {}, 0
    for shard, group in zip(names, groups):
        path = os.path.join(folder, shard)
        if fmt == "safetensors":
            reference.save(path, {k: ("F32", v) for k, v in group.items()}, metadata={"format": "pt"})
        else:
            torch.save({k: torch.from_numpy(v.copy()) for k, v in group.items()}, path)
        for k, v in group.items():
            weight_map[k] = shard
            size += v.nbytes
        if total == "files":
            pass
    if total == "files":
        size = sum(os.path.getsize(os.path.join(folder, s)) for s in names)
    index = {"metadata": {"total_size": size}, "weight_map": weight_map}
    dump_hf(os.path.join(folder, ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin") +
                         ".index.json"), index)
    return index


def vit_tensors(seed=1, hidden=32, patch=4, layers=2):
    g = rng(seed)
    t = {"vit.embeddings.cls_token": f32(g, 1, 1, hidden),
         "vit.embeddings.position_embeddings": f32(g, 1, 17, hidden),
         "vit.embeddings.patch_embeddings.projection.weight": f32(g, hidden, 3, patch, patch),
         "vit.embeddings.patch_embeddings.projection.bias": f32(g, hidden)}
    for i in range(layers):
        p = f"vit.encoder.layer.{i}."
        for k in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                  "attention.output.dense"):
            t[p + k + ".weight"] = f32(g, hidden, hidden)
            t[p + k + ".bias"] = f32(g, hidden)
        t[p + "layernorm_before.weight"] = f32(g, hidden)
        t[p + "layernorm_after.weight"] = f32(g, hidden)
    t["vit.layernorm.weight"] = f32(g, hidden)
    t["classifier.weight"] = f32(g, 10, hidden)
    t["classifier.bias"] = f32(g, 10)
    return t


VIT_CONFIG = {"architectures": ["ViTForImageClassification"], "attention_probs_dropout_prob": 0.0,
              "encoder_stride": 4, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 32,
              "image_size": 16, "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-12,
              "model_type": "vit", "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2,
              "patch_size": 4, "qkv_bias": True, "torch_dtype": "float32", "transformers_version": "4.44.2"}

VIT_PREPROCESSOR = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                    "image_processor_type": "ViTImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 2,
                    "rescale_factor": 0.00392156862745098, "size": {"height": 16, "width": 16}}

PATCH = "vit.embeddings.patch_embeddings.projection.weight"


def sharded_vit(folder, fmt="safetensors", total="tensors"):
    """A ViT in three shards, the patch embedding in the second; returns the tensors."""
    os.makedirs(folder, exist_ok=True)
    t = vit_tensors()
    names = list(t)
    first = [n for n in names if n.startswith("vit.embeddings") and n != PATCH and not n.endswith("projection.bias")]
    second = [PATCH, "vit.embeddings.patch_embeddings.projection.bias"] + [n for n in names if ".layer.0." in n]
    third = [n for n in names if n not in first and n not in second]
    write_shards(folder, [{n: t[n] for n in g} for g in (first, second, third)], fmt, total)
    dump_hf(os.path.join(folder, "config.json"), VIT_CONFIG)
    dump_hf(os.path.join(folder, "preprocessor_config.json"), VIT_PREPROCESSOR)
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("---\nlicense: apache-2.0\n---\n# a tiny ViT\n")
    with open(os.path.join(folder, ".gitattributes"), "w") as f:
        f.write("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return t


def diffusers_pipeline(folder):
    """A diffusers inpainting-style pipeline folder: unet (in_channels 4), vae, text_encoder, scheduler."""
    g = rng(7)
    for sub in ("unet", "vae", "text_encoder", "scheduler", "tokenizer"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    dump_hf(os.path.join(folder, "model_index.json"),
            {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.27.2",
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]})
    unet = {"conv_in.weight": f32(g, 32, 4, 3, 3), "conv_in.bias": f32(g, 32),
            "time_embedding.linear_1.weight": f32(g, 128, 32), "down_blocks.0.resnets.0.conv1.weight": f32(g, 32, 32, 3, 3),
            "conv_norm_out.weight": f32(g, 32), "conv_out.weight": f32(g, 4, 32, 3, 3), "conv_out.bias": f32(g, 4)}
    reference.save(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"),
                   {k: ("F32", v) for k, v in unet.items()})
    dump_hf(os.path.join(folder, "unet", "config.json"),
            {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.27.2", "act_fn": "silu",
             "block_out_channels": [32, 64], "center_input_sample": False, "cross_attention_dim": 32,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "in_channels": 4, "layers_per_block": 1,
             "norm_num_groups": 32, "out_channels": 4, "sample_size": 8,
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]})
    vae = {"encoder.conv_in.weight": f32(g, 32, 3, 3, 3), "encoder.conv_in.bias": f32(g, 32),
           "decoder.conv_in.weight": f32(g, 64, 4, 3, 3), "quant_conv.weight": f32(g, 8, 8, 1, 1),
           "post_quant_conv.weight": f32(g, 4, 4, 1, 1)}
    reference.save(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"),
                   {k: ("F32", v) for k, v in vae.items()})
    dump_hf(os.path.join(folder, "vae", "config.json"),
            {"_class_name": "AutoencoderKL", "_diffusers_version": "0.27.2", "block_out_channels": [32, 64],
             "in_channels": 3, "latent_channels": 4, "out_channels": 3, "sample_size": 16})
    text = {"text_model.embeddings.token_embedding.weight": f32(g, 100, 32),
            "text_model.final_layer_norm.weight": f32(g, 32)}
    reference.save(os.path.join(folder, "text_encoder", "model.safetensors"), {k: ("F32", v) for k, v in text.items()},
                   metadata={"format": "pt"})
    dump_hf(os.path.join(folder, "text_encoder", "config.json"),
            {"architectures": ["CLIPTextModel"], "hidden_size": 32, "model_type": "clip_text_model"})
    dump_hf(os.path.join(folder, "scheduler", "scheduler_config.json"),
            {"_class_name": "PNDMScheduler", "beta_end": 0.012, "num_train_timesteps": 1000})
    with open(os.path.join(folder, "tokenizer", "vocab.json"), "w") as f:
        json.dump({"a": 0, "b": 1}, f)
    return unet, vae


TIMM_CONFIG = {
    "architecture": "resnet18",
    "num_classes": 10,
    "num_features": 64,
    "pretrained_cfg": {
        "tag": "a1_in1k",
        "custom_load": False,
        "input_size": [3, 32, 32],
        "test_input_size": [3, 40, 40],
        "fixed_input_size": False,
        "interpolation": "bicubic",
        "crop_pct": 0.95,
        "crop_mode": "center",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "num_classes": 10,
        "pool_size": [1, 1],
        "first_conv": "conv1",
        "classifier": "fc",
    },
}


def timm_folder(folder, fmt="safetensors"):
    """A timm Hub folder: the first layer is conv1, and an auxiliary 3-channel conv makes the shape
    rule ambiguous, so that only first_conv finds it."""
    import torch
    os.makedirs(folder, exist_ok=True)
    g = rng(3)
    t = {"conv1.weight": f32(g, 16, 3, 7, 7), "bn1.weight": f32(g, 16), "bn1.bias": f32(g, 16),
         "layer1.0.conv1.weight": f32(g, 16, 16, 3, 3), "aux_rgb.weight": f32(g, 8, 3, 1, 1),
         "fc.weight": f32(g, 10, 16), "fc.bias": f32(g, 10)}
    if fmt == "safetensors":
        reference.save(os.path.join(folder, "model.safetensors"), {k: ("F32", v) for k, v in t.items()})
    else:
        torch.save({k: torch.from_numpy(v.copy()) for k, v in t.items()}, os.path.join(folder, "pytorch_model.bin"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(TIMM_CONFIG, f, indent=4)
    return t
