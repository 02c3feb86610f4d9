# Cascade Mask R-CNN with a ConvNeXt backbone, FPN and three "4conv1fc" box heads
# (SyncBN, GIoU loss x10, class-specific regression), as in the paper's COCO recipes.
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'


def bbox_head(target_stds):
    return dict(
        type='ConvFCBBoxHead',
        num_shared_convs=4,
        num_shared_fcs=1,
        in_channels=256,
        conv_out_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=80,
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[0., 0., 0., 0.],
            target_stds=target_stds),
        reg_class_agnostic=False,
        reg_decoded_bbox=True,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        drop_path_rate=0.4,
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[96, 192, 384, 768]),
    roi_head=dict(bbox_head=[
        bbox_head([0.1, 0.1, 0.2, 0.2]),
        bbox_head([0.05, 0.05, 0.1, 0.1]),
        bbox_head([0.033, 0.033, 0.067, 0.067]),
    ]))
del bbox_head  # a config holds data, not functions
