"""Every config key train.py/evaluate.py know, with its type: one table per section.

A key is a dotted path below its section (``resume_ckpt_path``, ``build_info.videos.storage``);
``<split>`` stands for any split name. :mod:`lavis_mmict.config_checks` walks the user's config
against these tables: an unknown key is an error with the closest known one, a value of the wrong
type an error naming key, value and type. Adding a key is one line in the table of the code that
reads it (and one row in docs/configuration.md: tests/test_config_schema.py keeps the two equal).

Classes of other plugins declare their own keys: a registered model, dataset builder, task or
runner class may set ``CONFIG_KEYS = {"dotted.key": kind, ...}`` (kinds below, or a plain list of
names: any value). Keys of a class that declares nothing and is not in these tables are not
checked (logged once). ``run.unchecked_keys: [model.my_key, datasets.mine.x, ...]`` lets named
keys (and everything below them) through unchecked.
"""
from dataclasses import fields

from lavis_mmict.datasets.demonstrations import DemonstrationConfig
from lavis_mmict.datasets.similarity import EncoderConfig


class Kind:
    """What values a key takes: ``name`` (for messages) and a predicate; ``null``: None allowed."""

    def __init__(self, name, accepts, null=False):
        self.name, self.accepts_value, self.null = name, accepts, null

    def accepts(self, value):
        return (self.null and value is None) or self.accepts_value(value)

    def __repr__(self):
        return self.name + (" or null" if self.null else "")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    if isinstance(value, bool):
        return False
    try:
        float(value)  # LAVIS and our code read these with float(); "1e-5" from YAML is a str
        return True
    except (TypeError, ValueError):
        return False


INT = Kind("int", _is_int)
FLOAT = Kind("number", _is_number)
BOOL = Kind("bool", lambda v: isinstance(v, bool))
STR = Kind("str", lambda v: isinstance(v, str))
LIST = Kind("list", lambda v: isinstance(v, (list, tuple)))
MAP = Kind("mapping", lambda v: isinstance(v, dict))  # its keys are not checked
ANY = Kind("any value", lambda v: True, null=True)
STR_OR_INT = Kind("str or int", lambda v: isinstance(v, str) or _is_int(v))
STR_OR_LIST = Kind("str or list", lambda v: isinstance(v, (str, list, tuple)))
INT_OR_PAIR = Kind("int or [h, w]", lambda v: _is_int(v) or (isinstance(v, (list, tuple)) and len(v) == 2))


def opt(kind):
    """``kind`` or null."""
    return Kind(kind.name, kind.accepts_value, null=True)


#: a LAVIS processor entry (``vis_processor.train`` ...): its name and the keys LAVIS 1.0.2's
#: processors read in ``from_config``
PROCESSOR_KEYS = {"name": STR, "image_size": INT, "mean": opt(LIST), "std": opt(LIST),
                  "min_scale": FLOAT, "max_scale": FLOAT, "max_words": INT, "prompt": STR,
                  "n_frms": INT, "max_turns": INT, "use_caption": BOOL, "visual_ft": ANY,
                  "audio_ft": ANY}


def _below(prefix, table):
    return {f"{prefix}.{key}": kind for key, kind in table.items()}


# --- model: ---------------------------------------------------------------------------------

#: read by LAVIS for every model (config merge, load_checkpoint_from_config)
LAVIS_MODEL_KEYS = {"arch": STR, "model_type": STR, "pretrained": opt(STR), "finetuned": opt(STR),
                    "load_finetuned": BOOL}

#: backbones.py: ViT, Q-Former, LLM (both of our models)
BACKBONE_KEYS = {
    "vit_model": STR, "vit_weights": opt(STR), "vit_init": STR, "image_size": INT,
    "drop_path_rate": FLOAT, "use_grad_checkpoint": BOOL, "vit_precision": STR, "freeze_vit": BOOL,
    "qformer_model": STR, "qformer_init": STR, "num_query_token": INT, "cross_attention_freq": INT,
    "llm_model": STR, "llm_init": STR, "llm_dtype": STR, "llm_config_overrides": opt(MAP),
    "freeze_llm": BOOL, "hf_cache_dir": opt(STR), "prompt": STR, "max_txt_len": INT,
    "demo_format": STR,
}

MODEL_KEYS = {
    "mmict_blip2": {
        **LAVIS_MODEL_KEYS, **BACKBONE_KEYS,
        "frame_mode": STR, "num_frames": opt(INT), "train_separator": BOOL,
        "query_text_in_qformer": opt(BOOL), "qformer_text_init": opt(STR),
        "demo_feature_cache": opt(STR), "demo_feature_cache_dir": opt(STR),
        "demo_feature_cache_memory_items": INT,
        # models/pool_store.py
        "demo_feature_store": STR, "demo_feature_store_dir": opt(STR),
    },
    "aim_opt": {
        **LAVIS_MODEL_KEYS, **BACKBONE_KEYS,
        "fusion_layer": INT, "projection": STR, "separator": STR, "train_separator": BOOL,
        "freeze_qformer": BOOL,
        "demo_bank": opt(MAP), "demo_bank.enabled": BOOL, "demo_bank.max_items": INT,
        "demo_bank.disk_dir": opt(STR), "demo_bank.log_every": INT,
    },
}

#: names of other versions or of LAVIS's BLIP-2 that our models read under another name
RENAMED_MODEL_KEYS = {"demo_mode": "demo_format", "img_size": "image_size", "opt_model": "llm_model",
                      "t5_model": "llm_model"}

# --- datasets: <builder>: -------------------------------------------------------------------

#: LAVIS's BaseDatasetBuilder (every builder)
LAVIS_DATASET_KEYS = {
    "type": STR, "data_type": STR,
    **_below("vis_processor.train", PROCESSOR_KEYS), **_below("vis_processor.eval", PROCESSOR_KEYS),
    **_below("text_processor.train", PROCESSOR_KEYS), **_below("text_processor.eval", PROCESSOR_KEYS),
}

#: builders.py ICLDatasetBuilder (every ``*_icl`` builder over annotation files)
ICL_DATASET_KEYS = {
    **LAVIS_DATASET_KEYS,
    "build_info.root": opt(STR),
    "build_info.annotations.<split>.storage": opt(STR_OR_LIST),
    "build_info.annotations.<split>.url": opt(STR_OR_LIST),
    "build_info.videos.storage": opt(STR), "build_info.images.storage": opt(STR),
    "num_frames": INT, "frame_sampling": STR, "decode_size": opt(INT_OR_PAIR),
    "skip_bad_media": BOOL, "caption_prompts": opt(STR_OR_LIST),
    "demonstrations": opt(MAP),
    # demonstrations.py / similarity.py validate the values; the names come from their dataclasses
    **{f"demonstrations.{f.name}": ANY for f in fields(DemonstrationConfig) if f.name != "encoder"},
    "demonstrations.encoder": opt(MAP),
    **{f"demonstrations.encoder.{f.name}": ANY for f in fields(EncoderConfig)},
}

#: builders.py SyntheticVideoQAICLBuilder (the generated set of `make demo`)
SYNTHETIC_DATASET_KEYS = {
    **ICL_DATASET_KEYS,
    "build_info.storage": STR, "build_info.seed": INT, "build_info.num_clips.<split>": INT,
    "build_info.video_frames": INT, "build_info.frame_size": INT,
}

#: web_pairs.py WebPairsICLBuilder (AIM's webdataset shards)
WEB_PAIRS_DATASET_KEYS = {
    **LAVIS_DATASET_KEYS,
    "build_info.shards": STR_OR_LIST, "demonstrations.num": INT, "text_field": STR, "demo_text_field": STR,
    "demo_template": STR, "shuffle_buffer": INT, "seed": INT, "on_error": STR,
}

#: per registered builder name; builders not named here use their class's CONFIG_KEYS
DATASET_KEYS = {
    **{name: ICL_DATASET_KEYS for name in (
        "videoqa_icl", "imageqa_icl", "caption_icl", "msvd_qa_icl", "msrvtt_qa_icl",
        "msvd_caption_icl", "msrvtt_caption_icl", "coco_caption_icl", "vqav2_icl",
        "okvqa_icl", "vizwiz_icl", "hateful_memes_icl", "flickr30k_caption_icl")},
    "synthetic_videoqa_icl": SYNTHETIC_DATASET_KEYS,
    "web_pairs_icl": WEB_PAIRS_DATASET_KEYS,
}

# --- run: -----------------------------------------------------------------------------------

#: read by LAVIS 1.0.2's runner_base.py / runner_iter.py / base_task.py and its distributed set-up
LAVIS_RUN_KEYS = {
    "task": STR, "runner": STR, "lr_sched": STR, "init_lr": FLOAT, "min_lr": FLOAT,
    "warmup_lr": FLOAT, "warmup_steps": INT, "weight_decay": FLOAT, "lr_decay_rate": opt(FLOAT),
    "beta2": FLOAT, "max_epoch": INT, "max_iters": INT, "iters_per_inner_epoch": INT,
    "batch_size_train": INT, "batch_size_eval": INT, "num_workers": INT, "accum_grad_iters": INT,
    "log_freq": INT, "train_splits": LIST, "valid_splits": LIST, "test_splits": LIST,
    "train_dataset_ratios": opt(MAP), "use_dist_eval_sampler": BOOL, "output_dir": STR,
    "resume_ckpt_path": opt(STR), "evaluate": BOOL, "amp": BOOL, "device": STR,
    "distributed": BOOL, "dist_url": STR, "world_size": INT, "rank": INT, "gpu": INT,
    "dist_backend": STR,
}

RUN_KEYS = {
    **LAVIS_RUN_KEYS,
    # dist.py, runners/
    "dist_timeout_s": FLOAT, "find_unused_parameters": BOOL, "seed": INT, "job_id": opt(STR_OR_INT),
    "eval_ckpt_path": opt(STR),
    # runners/media_check.py
    "check_media": BOOL,
    # tasks/: generation and metrics in evaluation
    "num_beams": INT, "max_len": INT, "min_len": INT, "inference_method": STR, "prompt": opt(STR),
    "eval_log_freq": INT, "caption_metrics": STR_OR_LIST, "caption_tokenizer": STR,
    "caption_gt_files": opt(MAP),
    # tasks/icl_classification.py
    "positive_answer": STR, "negative_answer": STR,
    # config_checks.py: keys let through unchecked (plugins' own keys)
    "unchecked_keys": LIST,
}

# --- env: -----------------------------------------------------------------------------------

#: LAVIS's ``env:`` section (lavis/configs/default.yaml); data_root.py reads ``cache_root``
ENV_KEYS = {"cache_root": STR}
