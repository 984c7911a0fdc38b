"""Evaluation harnesses that reproduce the papers' tables (``python -m vision eval ENGINE``).

* :mod:`~vision.evaluation.records`: output folder, per-item JSONL, tables, summary JSON, settings.
* :mod:`~vision.evaluation.segmentation_metrics`: few-shot mIoU, FB-IoU and boundary IoU.
* :mod:`~vision.evaluation.fewshot_datasets`: PerSeg / FSS-1000 / COCO-20i / PASCAL-5i layouts, episodes.
* :mod:`~vision.evaluation.synthetic_datasets`: small datasets with exact masks in those layouts.
* :mod:`~vision.evaluation.ipseg_eval`: IPSeg one-shot segmentation.
* :mod:`~vision.evaluation.clip_scoring`: CLIP score, CLIP-T and image-image similarity.
* :mod:`~vision.evaluation.generation_eval`: DeepCache's CLIP score / speed-up / MACs table.
* :mod:`~vision.evaluation.story_eval`: Story-Adapter's CLIP-T and aCCS per round.
* :mod:`~vision.evaluation.plots`: the PNG chart next to each table.
"""
