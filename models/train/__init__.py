"""Training scripts of the native tiny model (VAE first, then the DiT on cached latents)."""
