"""FastAvatar networks (torch): the decoder, the encoder, and weight files (safetensors + card,
or the official release's ``.pth`` files loaded with ``weights_only=True``)."""

from .decoder import CODE_DIM, EMBED_DIM, FastAvatarDecoder
from .encoder import FastAvatarEncoder

__all__ = ["CODE_DIM", "EMBED_DIM", "FastAvatarDecoder", "FastAvatarEncoder"]
