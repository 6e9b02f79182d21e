"""Marketing images: product banners and ad creatives in channel formats, composed from catalog
photos (no weights), or with a diffusion-painted scene on GPUs; every creative carries its checks."""
from mmray.creative.layout import Box, CreativeRequestError, resolve_format
from mmray.creative.studio import Copy, Creative, CreativeStudio, Product, headline_for

__all__ = ["Box", "Copy", "Creative", "CreativeRequestError", "CreativeStudio", "Product", "headline_for",
           "resolve_format"]
