# Cascade R-CNN with boxes only (for data annotated with boxes), ConvNeXt-T (ImageNet-1K weights),
# COCO 3x. The recipe of cascade_convnext_t_coco.py without its mask branch: same backbone, FPN,
# three class-specific 4conv1fc box heads with GIoU loss, augmentation, AdamW with layer-wise decay
# 0.7 over 6 layers, schedule and AMP; masks are neither loaded nor evaluated. No number is
# published for this model (the paper reports Cascade Mask R-CNN).
_base_ = './cascade_convnext_t_coco.py'

model = dict(roi_head=dict(mask_roi_extractor=None, mask_head=None))


def _boxes_only(pipeline):
    return [dict(step, with_mask=False) if step['type'] == 'LoadAnnotations' else step
            for step in pipeline]


train_pipeline = _boxes_only(_base_.train_pipeline)
test_pipeline = _boxes_only(_base_.test_pipeline)
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator
