"""The networks: the frozen DINOv2 ViT and its registry of backbones, and the segmentation heads trained on it.

Offers: `vit` (the architecture), `backbone` (BACKBONES, create_backbone), `head` (HEADS, create_head).
"""
