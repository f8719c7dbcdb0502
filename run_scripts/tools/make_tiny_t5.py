"""Write the tiny offline FlanT5 stand-in committed under lavis_mmict/assets/tiny_t5/.

The `tiny_t5` model type must build with no network. LAVIS's Blip2T5 reads its tokenizer with
``T5TokenizerFast``, so this writes a ``tokenizer.json`` (a SentencePiece-style Unigram model built
with the `tokenizers` library) plus a random-init T5 config of width 64 shaped like FlanT5
(gated-GELU FFN, untied LM head, pad 0 / eos 1 / unk 2, an embedding table larger than the
vocabulary as in the real checkpoints). Run once when the word list changes:

    python run_scripts/tools/make_tiny_t5.py

The pieces are written by hand (no trainer), so the output is the same on every run: each word of
the shared word list is one piece ("▁word", also capitalised), and single characters cover the rest.
"""
import json
import os
import string

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from make_tiny_tokenizers import ASSETS, WORDS

SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5


def build_tokenizer():
    pieces = [(token, 0.0) for token in SPECIALS]
    seen = set(SPECIALS)

    def add(piece, score):
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    for word in dict.fromkeys(WORDS):  # whole words first: the most likely segmentation
        add("\u2581" + word, -2.0)
        add("\u2581" + word.capitalize(), -3.0)
    for char in string.ascii_letters + string.digits + string.punctuation:
        add("\u2581" + char, -8.0)
        add(char, -9.0)
    add("\u2581", -10.0)
    tokenizer = Tokenizer(Unigram(pieces, unk_id=SPECIALS.index("<unk>")))
    tokenizer.normalizer = normalizers.Replace("  ", " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", add_prefix_space=True)
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", add_prefix_space=True)
    eos_id = SPECIALS.index("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
    )
    return tokenizer


def write_t5(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump(specials, f, indent=2)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512, **specials}, f, indent=2)
    vocab = tokenizer.get_vocab_size()
    config = {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        # Like FlanT5 (32128 rows for 32100 pieces), the table has spare rows: added tokens such
        # as the demo separator take one of them instead of resizing the frozen LLM.
        "vocab_size": (vocab + 8 + 7) // 8 * 8,
        "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2,
        "num_heads": 4, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "dropout_rate": 0.0,
        "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0, "is_encoder_decoder": True,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
        "torch_dtype": "float32", "use_cache": True,
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    write_t5(os.path.join(ASSETS, "tiny_t5"))
    print("wrote", os.path.abspath(os.path.join(ASSETS, "tiny_t5")))
