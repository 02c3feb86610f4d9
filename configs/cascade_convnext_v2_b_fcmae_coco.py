# Cascade Mask R-CNN, ConvNeXt V2-B fine-tuned from FCMAE pre-training (ImageNet-1K images, no
# labels), COCO 3x (36 epochs), AMP, 8 GPUs x 2 images. No V2 Cascade result or recipe is
# published: every value is the V1 ConvNeXt-B recipe's (configs/cascade_convnext_b_coco.py:
# AdamW lr 2e-4, layer-wise decay 0.8 over 12 layers, drop path 0.7, multi-scale + crop), with
# the V2 block and its FCMAE weights. Ours, not the paper's.
_base_ = './cascade_convnext_b_coco.py'

pretrained = ('https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/'
              'convnextv2_base_1k_224_fcmae.pt')
model = dict(
    backbone=dict(use_grn=True, init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
