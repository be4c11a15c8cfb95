"""Decoder stage: latent time tiles to pixels (video VAE) to H.264 (PyAV)."""

from __future__ import annotations

from ray import serve

from tessera.models.config import ModelConfig
from tessera.models.registry import load_model
from tessera.serving.stages import DecodedTile, DecodeTileRequest, ModelThread
from tessera.serving.video import VideoEncodingConfig, encode_mp4, encode_png


class DecoderEngine:
    def __init__(self, model_config: ModelConfig, video: VideoEncodingConfig, threads: int | None = None):
        self._thread = ModelThread(threads)
        self._video = video
        self.model = load_model(model_config, parts={"vae"})

    def _decode(self, request: DecodeTileRequest) -> DecodedTile:
        frames = self.model.decode_latents(request.latents, context_frames=request.context_frames)
        if frames.shape[0] < request.num_frames:
            raise ValueError(
                f"tile {request.index} decoded to {frames.shape[0]} frames, expected at least {request.num_frames}"
            )
        frames = frames[: request.num_frames].numpy()  # (T, H, W, 3) uint8
        poster = None
        if request.poster_frame is not None:
            poster = encode_png(frames[request.poster_frame])
        return DecodedTile(
            index=request.index,
            first_frame=request.first_frame,
            num_frames=request.num_frames,
            mp4=encode_mp4(frames, request.fps, self._video),
            poster_png=poster,
        )

    async def decode_tile(self, request: DecodeTileRequest) -> DecodedTile:
        return await self._thread.run(self._decode, request)


@serve.deployment
class Decoder:
    """Serve shim around :class:`DecoderEngine`."""

    def __init__(self, model_config: ModelConfig, video: VideoEncodingConfig, threads: int | None = None):
        self.engine = DecoderEngine(model_config, video, threads)

    async def decode_tile(self, request: DecodeTileRequest) -> DecodedTile:
        return await self.engine.decode_tile(request)
