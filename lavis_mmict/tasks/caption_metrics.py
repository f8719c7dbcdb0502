"""COCO caption metrics with pycocoevalcap's scorers: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE.

What needs what (checked by :func:`available_metrics`):

- tokenisation: pycocoevalcap's Stanford PTB tokenizer jar, run with ``java``. Without java a
  pure-Python tokenizer (:func:`python_ptb_tokenize`) is used instead: the same lowercasing,
  clitic and punctuation splitting and punctuation removal for ordinary captions (the tests
  compare it with the jar), but not Stanford's full rule set (e.g. URLs, rare abbreviations);
  scores can then differ slightly from published ones, and a warning says so.
- BLEU, ROUGE-L, CIDEr: pure Python.
- METEOR: pycocoevalcap's METEOR 1.5 jar, needs ``java`` (about 5 s per call).
- SPICE: needs ``java`` and the Stanford CoreNLP 3.6.0 jars in pycocoevalcap's ``spice/lib``,
  which pycocoevalcap downloads on first use; we never trigger that download, so SPICE is only
  computed where those jars are already present (SPICE keeps its cache in pycocoevalcap's folder).

The unavailable metrics are left out, with a warning, unless asked for by name (an error then).
"""
import logging
import os
import re
import shutil
import subprocess

from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

__all__ = [
    "ALL_METRICS",
    "CaptionMetricsError",
    "available_metrics",
    "compute_caption_metrics",
    "java_available",
    "ptb_tokenize",
    "python_ptb_tokenize",
    "resolve_metrics",
    "spice_available",
    "tokenize_captions",
]

# pycocoevalcap is a namespace package (no __file__): locate it through one of its modules
PYCOCOEVALCAP_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)))
PTB_JAR = os.path.join(PYCOCOEVALCAP_ROOT, "tokenizer", STANFORD_CORENLP_3_4_1_JAR)
SPICE_JARS = (
    os.path.join(PYCOCOEVALCAP_ROOT, "spice", "spice-1.0.jar"),
    os.path.join(PYCOCOEVALCAP_ROOT, "spice", "lib", "stanford-corenlp-3.6.0.jar"),
    os.path.join(PYCOCOEVALCAP_ROOT, "spice", "lib", "stanford-corenlp-3.6.0-models.jar"),
)

#: metric groups, in report order; BLEU gives Bleu_1..Bleu_4
ALL_METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
_NEEDS_JAVA = ("METEOR", "SPICE")


class CaptionMetricsError(RuntimeError):
    """A caption metric was requested that cannot run here, or a scorer failed."""


def java_available():
    return shutil.which("java") is not None


def spice_available():
    return java_available() and all(os.path.isfile(path) for path in SPICE_JARS)


def available_metrics():
    """The metric groups that can run on this machine."""
    available = {"BLEU", "ROUGE_L", "CIDEr"}
    if java_available():
        available.add("METEOR")
    if spice_available():
        available.add("SPICE")
    return [name for name in ALL_METRICS if name in available]


def resolve_metrics(requested=None):
    """The metric groups to compute: ``None``/"auto" = all available ones (missing ones logged);
    an explicit list must name known groups that can run here (CaptionMetricsError otherwise)."""
    available = available_metrics()
    if requested is None or requested == "auto":
        missing = [name for name in ALL_METRICS if name not in available]
        if missing:
            logging.warning(
                "Caption metrics %s skipped: %s", missing,
                "; ".join(_why_unavailable(name) for name in missing),
            )
        return available
    if isinstance(requested, str):
        requested = [requested]
    requested = [str(name) for name in requested]
    if not requested:
        raise CaptionMetricsError(f"No caption metric requested; valid: {list(ALL_METRICS)}")
    unknown = [name for name in requested if name not in ALL_METRICS]
    if unknown:
        raise CaptionMetricsError(f"Unknown caption metric(s) {unknown}; valid: {list(ALL_METRICS)}")
    unavailable = [name for name in requested if name not in available]
    if unavailable:
        raise CaptionMetricsError(
            "Caption metric(s) cannot run here: "
            + "; ".join(_why_unavailable(name) for name in unavailable)
        )
    return [name for name in ALL_METRICS if name in requested]


def _why_unavailable(name):
    if name in _NEEDS_JAVA and not java_available():
        return f"{name} needs java (e.g. apt-get install default-jre-headless)"
    if name == "SPICE":
        missing = [path for path in SPICE_JARS if not os.path.isfile(path)]
        return f"SPICE needs {', '.join(missing)} (pycocoevalcap downloads them; no network here)"
    return f"{name} is unavailable"


# ---------------------------------------------------------------------------------------------
# tokenisation


def ptb_tokenize(sentences):
    """Stanford PTB tokenisation (pycocoevalcap's jar), lowercased, one output per sentence.

    Unlike pycocoevalcap's ``PTBTokenizer`` the text goes through stdin, so nothing is written
    into the installed package's folder.
    """
    if not sentences:
        return []
    text = "\n".join(sentence.replace("\n", " ").replace("\r", " ") for sentence in sentences)
    command = ["java", "-cp", PTB_JAR, "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", "-encoding", "utf-8"]
    completed = subprocess.run(command, input=text.encode("utf-8"), capture_output=True)
    if completed.returncode != 0:
        raise CaptionMetricsError(
            f"PTB tokenizer failed ({' '.join(command)}): {completed.stderr.decode(errors='replace')[-2000:]}"
        )
    lines = completed.stdout.decode("utf-8").split("\n")
    # trailing empty sentences may come back without their line breaks
    lines = (lines + [""] * len(sentences))[: len(sentences)]
    return lines


_CLITIC_NT = re.compile(r"(\w)(n't)\b")
_CLITIC_APOSTROPHE = re.compile(r"(\w)('(?:s|re|ve|ll|d|m))\b")
_PLURAL_POSSESSIVE = re.compile(r"(\w)'(?=\s|$)")
_OPENING_QUOTE = re.compile(r'(^|[\s(\[{])"')
_OPENING_SINGLE_QUOTE = re.compile(r"(^|[\s(\[{])'")
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_TOKEN = re.compile(
    r"""``|''|\.\.\.|--|[!?]+
      | n't | '(?:s|re|ve|ll|d|m)\b
      | \d+(?:[.,:/]\d+)+                     # 12.5  1,000  3:30  1/2
      | (?:[a-z]\.){2,}                       # u.s.a.  e.g.  p.m.
      | \b(?:mr|mrs|ms|dr|st|jr|sr|prof|etc|vs|inc|ltd|mt|ft)\.   # common abbreviations
      | [\w$#@&]+(?:[-'./@&][\w]+)*            # words, inner hyphens/apostrophes
      | \S""",
    re.VERBOSE,
)


def python_ptb_tokenize(sentence):
    """A pure-Python approximation of ``ptb_tokenize`` for one sentence (used without java)."""
    text = sentence.replace("\n", " ").lower()
    text = _OPENING_SINGLE_QUOTE.sub(r"\1 ` ", text)
    text = _OPENING_QUOTE.sub(r"\1 `` ", text).replace('"', " '' ")
    text = _CLITIC_NT.sub(r"\1 \2", text)
    text = _CLITIC_APOSTROPHE.sub(r"\1 \2", text)
    text = _PLURAL_POSSESSIVE.sub(r"\1 ' ", text)
    tokens = []
    for token in _TOKEN.findall(text):
        if token[0] in "$#" and len(token) > 1:  # "$3" -> "$ 3" as PTB does
            tokens.extend([token[0], token[1:]])
        else:
            tokens.append(_BRACKETS.get(token, token))
    return " ".join(tokens)


def tokenize_captions(captions_by_id, use_java=None):
    """``{id: [caption, ...]}`` -> ``{id: [tokenised caption without punctuation, ...]}``.

    ``use_java`` None: the PTB jar when java is available, else :func:`python_ptb_tokenize`.
    """
    if use_java is None:
        use_java = java_available()
    ids = list(captions_by_id)
    flat = [str(caption) for key in ids for caption in captions_by_id[key]]
    lines = ptb_tokenize(flat) if use_java else [python_ptb_tokenize(s) for s in flat]
    tokenized, position = {}, 0
    for key in ids:
        count = len(captions_by_id[key])
        tokenized[key] = [
            " ".join(word for word in line.rstrip().split(" ") if word and word not in PUNCTUATIONS)
            for line in lines[position: position + count]
        ]
        position += count
    return tokenized


# ---------------------------------------------------------------------------------------------
# scoring


def _scorer(name):
    if name == "BLEU":
        return Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]
    if name == "METEOR":
        from pycocoevalcap.meteor.meteor import Meteor

        return Meteor(), "METEOR"
    if name == "ROUGE_L":
        return Rouge(), "ROUGE_L"
    if name == "CIDEr":
        return Cider(), "CIDEr"
    if name == "SPICE":
        from pycocoevalcap.spice.spice import Spice

        return Spice(), "SPICE"
    raise CaptionMetricsError(f"Unknown caption metric {name!r}")


def compute_caption_metrics(ground_truth, predictions, metrics=None, use_java=None):
    """Corpus-level caption metrics.

    Args:
        ground_truth: ``{id: [reference caption, ...]}`` (raw text).
        predictions: ``{id: caption}`` (raw text), ids a subset of ``ground_truth``'s.
        metrics: groups from :data:`ALL_METRICS` (default: all available, see :func:`resolve_metrics`).
        use_java: PTB tokenizer via java (default: when java is available).

    Returns ``{"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"}`` (those computed), as
    pycocoevalcap reports them (fractions; CIDEr around 1 for good captions).
    """
    names = resolve_metrics(metrics)
    missing = [key for key in predictions if key not in ground_truth]
    if missing:
        raise CaptionMetricsError(f"No ground-truth captions for ids {missing[:5]}")
    if not predictions:
        raise CaptionMetricsError("No predictions to score")
    ids = list(predictions)
    gts = tokenize_captions({key: list(ground_truth[key]) for key in ids}, use_java)
    res = tokenize_captions({key: [predictions[key]] for key in ids}, use_java)
    scores = {}
    for name in names:
        scorer, keys = _scorer(name)
        score, _ = scorer.compute_score(gts, res)
        if isinstance(keys, list):
            scores.update({key: float(value) for key, value in zip(keys, score)})
        else:
            scores[keys] = float(score)
        del scorer  # METEOR and SPICE end their java processes when collected
    return scores
