"""Tessera's native video model family: causal video VAE, spacetime-patch DiT, flow matching."""
