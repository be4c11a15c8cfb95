"""Tiny random diffusers pipelines for the open families' tests, built locally (nothing is
fetched from a hub), the way diffusers' own tests build theirs: 2 layers, a few channels, a
word-level tokenizer made with ``tokenizers``. Each builder saves the pipeline with
``save_pretrained`` into a folder and returns it, so the tests serve the family from that folder."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "a red green blue yellow circle square ball cat dog moving to the right left up down bouncing slowly "
    "fast in on of and with bright dark sky grass water"
).split()


def word_tokenizer(max_length: int = 512):
    """A ``PreTrainedTokenizerFast`` over :data:`WORDS`: pad 0, eos 1 (appended), unknown 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{word: index + 3 for index, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_length
    )


def umt5_encoder(d_model: int = 32):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=64, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def wan_t2v(folder: Path, *, seed: int = 0, two_experts: bool = False, flow_shift: float = 3.0, text_dim: int = 32,
            expand_timesteps: bool = False) -> Path:
    """A tiny Wan 2.1 ``WanPipeline`` (UniPC, as the released folders have), or with
    ``two_experts`` a Wan 2.2 A14B-style one (``transformer_2`` below ``boundary_ratio`` 0.8), or
    with ``expand_timesteps`` a Wan 2.2 TI2V-style one (one timestep per token; image to video by a
    clean first latent frame). ``text_dim``: the text encoder's width (the released UMT5-XXL: 4096,
    for conditioning of real size)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=text_dim, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        ).eval()

    pipe = WanPipeline(
        tokenizer=word_tokenizer(),
        text_encoder=umt5_encoder(text_dim),
        vae=AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]).eval(),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift, num_train_timesteps=1000, solver_order=2,
        ),
        transformer=transformer(),
        transformer_2=transformer() if two_experts else None,
        boundary_ratio=0.8 if two_experts else None,
        expand_timesteps=expand_timesteps,
    )
    pipe.save_pretrained(folder)
    return folder


def clip_vision(image_size: int = 32, hidden_size: int = 4):
    """A tiny ``CLIPVisionModel`` and its ``CLIPImageProcessor``, configured here (as diffusers'
    Wan image-to-video tests build them): the processor resizes and crops to ``image_size``, the
    encoder's patch is 1 px, so ``image_size**2 + 1`` tokens of width ``hidden_size``."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=hidden_size, projection_dim=hidden_size, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, intermediate_size=16, patch_size=1)
    return CLIPVisionModel(config).eval(), CLIPImageProcessor(crop_size=image_size, size=image_size)


def wan_i2v(folder: Path, *, seed: int = 0, two_experts: bool = False, flow_shift: float = 3.0) -> Path:
    """A tiny ``WanImageToVideoPipeline``: Wan 2.1 I2V (transformer ``in_channels`` 16 + 4 + 16, a
    CLIP image encoder and ``image_dim``), or with ``two_experts`` Wan 2.2 I2V A14B's layout (two
    experts below ``boundary_ratio`` 0.8, no image encoder)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    hidden = 4

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32, image_dim=None if two_experts else hidden,
        ).eval()

    image_encoder, image_processor = clip_vision(hidden_size=hidden) if not two_experts else (None, None)
    pipe = WanImageToVideoPipeline(
        tokenizer=word_tokenizer(),
        text_encoder=umt5_encoder(32),
        vae=AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]).eval(),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift, num_train_timesteps=1000, solver_order=2,
        ),
        image_encoder=image_encoder, image_processor=image_processor,
        transformer=transformer(), transformer_2=transformer() if two_experts else None,
        boundary_ratio=0.8 if two_experts else None,
    )
    pipe.save_pretrained(folder)
    return folder


def wan_i2v_pipeline_video(folder: Path, *, prompt: str, negative_prompt: str, max_sequence_length: int, **call):
    """``WanImageToVideoPipeline(folder)(...)``, the reference of the image-to-video tests, with the
    prompts encoded by the text-to-video ``WanPipeline.encode_prompt`` over the same folder's
    tokenizer and UMT5 (the code Tessera's stages run) and passed in as embeddings. Why: diffusers
    0.42.1's image-to-video module cleans prompts with ftfy without checking it is installed (the
    text-to-video module checks); given embeddings, the pipeline never cleans a prompt."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    text = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, scheduler=pipe.scheduler,
                       transformer=pipe.transformer)
    embeds, negative_embeds = text.encode_prompt(prompt, negative_prompt, do_classifier_free_guidance=True,
                                                 max_sequence_length=max_sequence_length, dtype=torch.float32)
    return pipe(prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, **call).frames[0]


def t5_encoder(d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=64, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def ltx_t2v(folder: Path, *, seed: int = 0, timestep_conditioning: bool = False, image_to_video: bool = False) -> Path:
    """A tiny ``LTXPipeline`` as diffusers' own tests build it (VAE 4x spatial, 4x temporal), with
    LTX 0.9.1's dynamically shifted flow-match Euler scheduler; with ``image_to_video`` the same
    components saved as an ``LTXImageToVideoPipeline`` (LTX-Video's checkpoints serve both)."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXImageToVideoPipeline, LTXPipeline
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    ).eval()
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1), timestep_conditioning=timestep_conditioning, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    ).eval()
    with torch.no_grad():  # normalisation statistics that are not the identity, as trained VAEs have
        vae.latents_mean.copy_(torch.linspace(-0.5, 0.5, 8))
        vae.latents_std.copy_(torch.linspace(0.5, 2.0, 8))
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    pipeline = LTXImageToVideoPipeline if image_to_video else LTXPipeline
    pipe = pipeline(scheduler=scheduler, vae=vae, text_encoder=t5_encoder(32), tokenizer=word_tokenizer(128), transformer=transformer)
    pipe.save_pretrained(folder)
    return folder


def cogvideox_t2v(folder: Path, *, seed: int = 0, dpm: bool = False) -> Path:
    """A tiny CogVideoX 1.0 ``CogVideoXPipeline`` as diffusers' own tests build it (16x16 px, 9
    frames), with 3D RoPE (as CogVideoX-5b) and DDIM (2b) or the stochastic DPM solver (5b)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXDPMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2, text_embed_dim=32,
        num_layers=1, sample_width=2, sample_height=2, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=16, use_rotary_positional_embeddings=True,
    ).eval()
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()
    settings = dict(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True, snr_shift_scale=1.0)
    scheduler = (CogVideoXDPMScheduler if dpm else CogVideoXDDIMScheduler)(**settings)
    pipe = CogVideoXPipeline(tokenizer=word_tokenizer(16), text_encoder=t5_encoder(32), vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(folder)
    return folder



HUNYUAN_CROP = 108
"""``HunyuanVideo15Pipeline.prompt_template_encode_start_idx``: tokens of the chat template before the prompt."""


def hunyuan_system_message() -> str:
    """The system message HunyuanVideo 1.5's pipeline puts before every prompt (the default of its
    ``_get_mllm_prompt_embeds``, the same text its ``__init__`` sets)."""
    import inspect

    from diffusers import HunyuanVideo15Pipeline

    return inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters["system_message"].default


def chat_tokenizer(prefix_tokens: int = HUNYUAN_CROP, max_length: int = 2048):
    """:func:`word_tokenizer` with a chat template whose system part is exactly ``prefix_tokens``
    tokens long, as Qwen2.5-VL's template around HunyuanVideo 1.5's system message is (the pipeline
    crops that many), so what remains after the crop is the prompt's own tokens."""
    tokenizer = word_tokenizer(max_length)
    system = "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    tokenizer.chat_template = system + "{% endif %}{% endfor %}"
    conversation = [{"role": "system", "content": hunyuan_system_message()}, {"role": "user", "content": "a"}]
    used = len(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"])
    if used > prefix_tokens:
        raise ValueError(f"the system message takes {used} tokens, more than the crop of {prefix_tokens}")
    filler = " sky" * (prefix_tokens - used)  # each system word is one <unk>; filler words make up the rest
    tokenizer.chat_template = system + filler + "{% else %} {{ m['content'] }}{% endif %}{% endfor %}"
    return tokenizer


def hunyuan15_t2v(folder: Path, *, seed: int = 0, guidance_scale: float = 6.0) -> Path:
    """A tiny ``HunyuanVideo15Pipeline`` (text to video) with the sizes of diffusers' own tests:
    a 2-layer Qwen2.5-VL text model, a 2-layer T5 for ByT5 (``ByT5Tokenizer`` needs no files), a
    1-layer transformer, a VAE of 4x spatial and 2x temporal compression; the flow-match Euler
    scheduler with shift 7 and the ClassifierFreeGuidance guider, as the released folders have."""
    from diffusers import AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline
    from diffusers import HunyuanVideo15Transformer3DModel
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_refiner_layers=1,
        mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=32, image_embed_dim=12,
        rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v",
    ).eval()
    vae = AutoencoderKLHunyuanVideo15(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16), layers_per_block=1,
        spatial_compression_ratio=4, temporal_compression_ratio=2, downsample_match_channel=False, upsample_match_channel=False,
    ).eval()
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}, rope_theta=1e6,
        bos_token_id=None, eos_token_id=1, pad_token_id=0,
    )).eval()
    byt5 = T5EncoderModel(T5Config(
        vocab_size=384, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval()
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=chat_tokenizer(), transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=byt5, tokenizer_2=ByT5Tokenizer(),
        guider=ClassifierFreeGuidance(guidance_scale=guidance_scale),
    )
    pipe.save_pretrained(folder)
    return folder
