"""Demo-aware datasets: samplers, media loading, ICL dataset + collater, registered builders.

Importing this package registers the ``*_icl`` dataset builders in LAVIS's registry.
"""
from lavis_mmict.datasets.demonstrations import (  # noqa: F401
    DemonstrationConfig,
    DemoSampler,
    RandomDemoSampler,
    SameSourceDemoSampler,
    build_demo_sampler,
    format_demo_text,
)
from lavis_mmict.datasets.similar_sampler import SimilarDemoSampler  # noqa: F401
from lavis_mmict.datasets.media import MediaError, load_image, load_video_frames, load_visual  # noqa: F401
from lavis_mmict.datasets.records import MediaRecordDataset, load_annotations  # noqa: F401
from lavis_mmict.datasets.batching import collate_icl_samples  # noqa: F401
from lavis_mmict.datasets.icl_dataset import ICLDataset  # noqa: F401
from lavis_mmict.datasets.synthetic import SYNTHETIC_VOCABULARY, generate_synthetic_videoqa  # noqa: F401
from lavis_mmict.datasets import builders  # noqa: F401  (registers the builders)
from lavis_mmict.datasets import web_pairs  # noqa: F401  (registers the web_pairs_icl builder)
