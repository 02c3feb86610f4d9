# UperNet, ConvNeXt V2-T fine-tuned from FCMAE pre-training (ImageNet-1K images, no labels),
# ADE20K, 512x512 crops, 160k iterations, AMP, 8 GPUs x 2 images. Every value is the V1
# ConvNeXt-T recipe's (configs/upernet_convnext_t_ade20k.py), with the V2 block and its
# FCMAE weights: ours, not the V2 paper's recipe, and not checked against its ADE20K table.
_base_ = './upernet_convnext_t_ade20k.py'

pretrained = ('https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/'
              'convnextv2_tiny_1k_224_fcmae.pt')
model = dict(
    backbone=dict(use_grn=True, init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
