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


def wan_t2v(folder: Path, *, seed: int = 0, two_experts: bool = False, flow_shift: float = 3.0) -> Path:
    """A tiny Wan 2.1 ``WanPipeline`` (UniPC, as the released folders have), or with
    ``two_experts`` a Wan 2.2 A14B-style one (``transformer_2`` below ``boundary_ratio`` 0.8)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        ).eval()

    pipe = WanPipeline(
        tokenizer=word_tokenizer(),
        text_encoder=umt5_encoder(32),
        vae=AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]).eval(),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift, num_train_timesteps=1000, solver_order=2,
        ),
        transformer=transformer(),
        transformer_2=transformer() if two_experts else None,
        boundary_ratio=0.8 if two_experts else None,
    )
    pipe.save_pretrained(folder)
    return folder


def t5_encoder(d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=64, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def ltx_t2v(folder: Path, *, seed: int = 0, timestep_conditioning: bool = False) -> Path:
    """A tiny ``LTXPipeline`` as diffusers' own tests build it (VAE 4x spatial, 4x temporal), with
    LTX 0.9.1's dynamically shifted flow-match Euler scheduler."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

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
    pipe = LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=t5_encoder(32), tokenizer=word_tokenizer(128), transformer=transformer)
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
