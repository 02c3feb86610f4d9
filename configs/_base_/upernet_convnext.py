# UperNet with a ConvNeXt backbone: UPerHead on all four stages (channels 512, pool scales
# 1/2/3/6, SyncBN) and an auxiliary FCN head on stage 2 (loss weight 0.4), 150 ADE20K classes,
# as in the paper's ADE20K recipes. mmseg's base names mmpretrain's ConvNeXt; this one ours.
_base_ = 'mmseg::_base_/models/upernet_convnext.py'
custom_imports = dict(imports=['convnext_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        drop_path_rate=0.4,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
