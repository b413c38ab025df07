"""Subject data: photo loading, DreamBench, the frozen-encoder token cache and the LightningDataModule."""

from varlit.data.batches import PromptBatch, SubjectBatch
from varlit.data.cache import CacheStats, TensorCache
from varlit.data.datamodule import SubjectDataModule
from varlit.data.dreambench import DreamBenchError, DreamBenchSpec, download_dreambench, parse_prompts_file
from varlit.data.images import BadImageError, load_rgb
from varlit.data.subjects import PLACEHOLDER, Subject, SubjectError

__all__ = [
    "PLACEHOLDER",
    "BadImageError",
    "CacheStats",
    "DreamBenchError",
    "DreamBenchSpec",
    "PromptBatch",
    "Subject",
    "SubjectBatch",
    "SubjectDataModule",
    "SubjectError",
    "TensorCache",
    "download_dreambench",
    "load_rgb",
    "parse_prompts_file",
]
