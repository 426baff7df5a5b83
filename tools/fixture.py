"""The bundled offline fixture: tiny datasets and tiny base models in the Hugging Face Hub's own layouts.

The text is a synthetic language built so that there is something to learn:

* a vocabulary of *concepts*, each with a document word and a different query word (a synonym), grouped
  into topics; every document mentions a few concepts of one topic plus one concept from elsewhere;
* a query names two concepts of its source document, mostly through their query-side synonyms, so
  lexical overlap alone ranks the source document only part of the time: a model must learn the
  synonym pairs from training data, and evaluation queries are held out on unseen documents;
* teacher scores come from BM25 (the ``bm25s`` library) over *concept-normalised* text, i.e. a real
  retrieval function that knows the synonyms, as a cross-encoder teacher knows more than the student.

Everything is drawn from one seeded ``random.Random`` and written with fixed parquet options, so running
``python -m tools.fixture`` reproduces the committed files byte for byte (a test checks this).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FIXTURE_SEED = 20261122
N_TOPICS = 24
CONCEPTS_PER_TOPIC = 6
FILLER = (
    "the of and a in is to for with on as by at from that this it are be or an was were which its "
    "has have about into over under between through during also more most such these those other"
).split()
QUERY_FILLER = "what is how does why are which the of about".split()
SYLLABLES = (
    "ba be bi bo bu da de di do ka ke ki ko la le li lo ma me mi mo na ne ni no ra "
    "re ri ro sa se si so ta te ti to va ve vi vo za ze zi zo"
).split()

NANOBEIR_SETS = {"NanoMSMARCO": 11, "NanoSciFact": 12, "NanoNFCorpus": 13}
"""Fixture evaluation sets, named like NanoBEIR splits, with the seed offset of each."""


@dataclass(frozen=True)
class Concept:
    doc_word: str
    query_word: str
    topic: int


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    concepts: tuple[int, ...]


class SyntheticLanguage:
    """Concepts, topics and a sampler of documents and queries over them."""

    def __init__(self, rng: random.Random):
        words: set[str] = set(FILLER) | set(QUERY_FILLER)
        self.concepts: list[Concept] = []
        for topic in range(N_TOPICS):
            for _ in range(CONCEPTS_PER_TOPIC):
                doc_word, query_word = self._new_word(rng, words), self._new_word(rng, words)
                self.concepts.append(Concept(doc_word, query_word, topic))
        self.by_topic = [[i for i, c in enumerate(self.concepts) if c.topic == t] for t in range(N_TOPICS)]

    @staticmethod
    def _new_word(rng: random.Random, taken: set[str]) -> str:
        while True:
            word = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3))))
            if word not in taken:
                taken.add(word)
                return word

    def document(self, rng: random.Random, doc_id: str) -> Document:
        topic = rng.randrange(N_TOPICS)
        concepts = rng.sample(self.by_topic[topic], 3)
        other = rng.choice([i for i in range(len(self.concepts)) if self.concepts[i].topic != topic])
        concepts.append(other)
        words = [self.concepts[c].doc_word for c in concepts for _ in range(rng.choice((1, 2)))]
        words += rng.choices(FILLER, k=rng.randint(14, 30))
        rng.shuffle(words)
        return Document(doc_id, " ".join(words), tuple(concepts))

    def query(self, rng: random.Random, doc: Document) -> tuple[str, tuple[int, int]]:
        """Two concepts of ``doc`` (always its off-topic one), mostly as query-side synonyms."""
        pair = (rng.choice(doc.concepts[:3]), doc.concepts[3])
        words = [self.concepts[c].query_word if rng.random() < 0.7 else self.concepts[c].doc_word for c in pair]
        words = rng.sample(QUERY_FILLER, rng.randint(1, 3)) + words
        return " ".join(words), pair

    def canonical(self, text: str) -> list[str]:
        """Text with every synonym replaced by its concept id and filler dropped: what the teacher sees."""
        lookup = {}
        for i, c in enumerate(self.concepts):
            lookup[c.doc_word] = lookup[c.query_word] = f"c{i}"
        return [lookup[w] for w in text.split() if w in lookup]


def _corpus(lang: SyntheticLanguage, rng: random.Random, prefix: str, n: int) -> list[Document]:
    return [lang.document(rng, f"{prefix}{i}") for i in range(n)]


def _unique_queries(
    lang: SyntheticLanguage, rng: random.Random, docs: list[Document], n: int, prefix: str
) -> list[tuple[str, str, Document]]:
    """``n`` queries whose concept pair occurs in exactly one document of ``docs`` (clean relevance)."""
    holders: dict[frozenset[int], int] = {}
    for d in docs:
        for a in d.concepts:
            for b in d.concepts:
                if a < b:
                    key = frozenset((a, b))
                    holders[key] = holders.get(key, 0) + 1
    out: list[tuple[str, str, Document]] = []
    for d in rng.sample(docs, len(docs)):
        text, pair = lang.query(rng, d)
        if holders.get(frozenset(pair), 0) == 1:
            out.append((f"{prefix}{len(out)}", text, d))
        if len(out) == n:
            break
    return out


def _write_parquet(table: dict[str, list], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), path, compression="zstd", use_dictionary=False, write_statistics=False)


def _dataset_readme(title: str, configs: dict[str, dict[str, str]]) -> str:
    """A dataset card with the Hub's ``configs:`` block mapping config -> split -> parquet path."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, path in splits.items():
            lines += [f"  - split: {split}", f"    path: {path}"]
    lines += [
        "---",
        f"# {title}",
        "",
        "Synthetic offline fixture generated by `python -m tools.fixture`.",
        "",
    ]
    return "\n".join(lines)


def _bm25_top_k(corpus_tokens: list[list[str]], query_tokens: list[list[str]], k: int):
    import bm25s
    import numpy as np

    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([" ".join(t) for t in corpus_tokens], stopwords=None, show_progress=False), show_progress=False
    )
    ids, scores = retriever.retrieve(
        bm25s.tokenize([" ".join(t) for t in query_tokens], stopwords=None, show_progress=False),
        k=k,
        show_progress=False,
        n_threads=1,
    )
    return np.asarray(ids), np.asarray(scores)


def write_kd_dataset(
    lang: SyntheticLanguage, rng: random.Random, out: Path, n_docs: int, n_queries: int, n_candidates: int
) -> None:
    """The ms-marco-en-bge-gemma shape: configs queries, documents, train and train_unormalized."""
    docs = _corpus(lang, rng, "", n_docs)
    queries = _unique_queries(lang, rng, docs, n_queries, "")
    ids, scores = _bm25_top_k(
        [lang.canonical(d.text) for d in docs], [lang.canonical(q) for _, q, _ in queries], n_candidates
    )
    raw_scores = [[round(float(s), 4) for s in row] for row in scores]
    normalised = []
    for row in raw_scores:  # min-max per query, as the normalised `train` config is (inferred from the data)
        lo, hi = min(row), max(row)
        normalised.append([round((s - lo) / (hi - lo), 6) if hi > lo else 1.0 for s in row])
    train_ids = [[int(docs[i].doc_id) for i in row] for row in ids]
    _write_parquet(
        {"query_id": [int(q) for q, _, _ in queries], "text": [t for _, t, _ in queries]},
        out / "queries" / "train-00000-of-00001.parquet",
    )
    _write_parquet(
        {"document_id": [int(d.doc_id) for d in docs], "text": [d.text for d in docs]},
        out / "documents" / "train-00000-of-00001.parquet",
    )
    query_ids = [int(q) for q, _, _ in queries]
    _write_parquet(
        {"query_id": query_ids, "document_ids": train_ids, "scores": normalised},
        out / "train" / "train-00000-of-00001.parquet",
    )
    _write_parquet(
        {"query_id": query_ids, "document_ids": train_ids, "scores": raw_scores},
        out / "train_unormalized" / "train-00000-of-00001.parquet",
    )
    (out / "README.md").write_text(
        _dataset_readme(
            "Tiny ms-marco-en-bge-gemma",
            {
                c: {"train": f"{c}/train-00000-of-00001.parquet"}
                for c in ("queries", "documents", "train", "train_unormalized")
            },
        )
    )


def write_triplets(lang: SyntheticLanguage, rng: random.Random, out: Path, n_docs: int, n_triplets: int) -> None:
    """The msmarco-10m-triplets shape (query, positive, negative); negatives are BM25 hard negatives."""
    docs = _corpus(lang, rng, "", n_docs)
    queries = _unique_queries(lang, rng, docs, n_triplets, "")
    ids, _ = _bm25_top_k([d.text.split() for d in docs], [q.split() for _, q, _ in queries], 8)
    rows: dict[str, list[str]] = {"query": [], "positive": [], "negative": []}
    for (_, text, pos), hits in zip(queries, ids, strict=True):
        negatives = [docs[i] for i in hits if docs[i].doc_id != pos.doc_id]
        rows["query"].append(text)
        rows["positive"].append(pos.text)
        rows["negative"].append(rng.choice(negatives[:5]).text)
    _write_parquet(rows, out / "data" / "train-00000-of-00001.parquet")
    (out / "README.md").write_text(
        _dataset_readme("Tiny msmarco-10m-triplets", {"default": {"train": "data/train-00000-of-00001.parquet"}})
    )


def write_nanobeir(lang: SyntheticLanguage, out: Path, n_docs: int, n_queries: int) -> None:
    """Evaluation sets in both NanoBEIR layouts, from the same rows: sentence-transformers' ``NanoBEIR-en``
    (configs corpus, queries, qrels; one split per set) under ``out/tiny-NanoBEIR-en`` and zeta-alpha-ai's
    one repository per set (same configs, split ``train``; what PyLate's evaluator reads) under
    ``out/tiny-<set>``."""
    combined = out / "tiny-NanoBEIR-en"
    for name, offset in NANOBEIR_SETS.items():
        rng = random.Random(FIXTURE_SEED + offset)
        docs = _corpus(lang, rng, f"{name}-d", n_docs)
        queries = _unique_queries(lang, rng, docs, n_queries, f"{name}-q")
        tables = {
            "corpus": {"_id": [d.doc_id for d in docs], "text": [d.text for d in docs]},
            "queries": {"_id": [q for q, _, _ in queries], "text": [t for _, t, _ in queries]},
            "qrels": {"query-id": [q for q, _, _ in queries], "corpus-id": [d.doc_id for _, _, d in queries]},
        }
        for config, table in tables.items():
            _write_parquet(table, combined / config / f"{name}.parquet")
            _write_parquet(table, out / f"tiny-{name}" / config / "train-00000-of-00001.parquet")
        (out / f"tiny-{name}" / "README.md").write_text(
            _dataset_readme(f"Tiny {name}", {c: {"train": f"{c}/train-00000-of-00001.parquet"} for c in tables})
        )
    (combined / "README.md").write_text(
        _dataset_readme(
            "Tiny NanoBEIR-en",
            {c: {name: f"{c}/{name}.parquet" for name in NANOBEIR_SETS} for c in ("corpus", "queries", "qrels")},
        )
    )


def _all_texts(root: Path) -> list[str]:
    texts: list[str] = []
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path)
        for column in ("text", "query", "positive", "negative"):
            if column in table.column_names:
                texts += table.column(column).to_pylist()
    return texts


def write_tokenizer(texts: list[str], out: Path) -> None:
    """A small uncased WordPiece tokenizer (the bert-base-uncased layout) whose vocabulary is every word of
    the fixture plus single characters, sorted, so that it is deterministic (the WordPiece trainer is not)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.lower().split()})
    chars = sorted({ch for w in words for ch in w})
    vocab_list = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars] + words
    vocab_list = list(dict.fromkeys(vocab_list))  # one-letter words ("a") are also characters
    tok = Tokenizer(models.WordPiece(vocab={w: i for i, w in enumerate(vocab_list)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    fast.save_pretrained(out)


def pretrain_mlm(model, tokenizer, texts: list[str], steps: int, learning_rate: float = 1e-3) -> None:
    """A short masked-language-model pretraining on the fixture's training text, so that the tiny base
    models start as real ones do: predicting words, with vocabulary logits far from zero (a SPLADE head on
    a random MLM starts flat and does not learn in a smoke-sized run). Single-threaded and seeded, so the
    weights are reproducible on a given torch build."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    torch.manual_seed(FIXTURE_SEED)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    order = random.Random(FIXTURE_SEED)
    model.train()
    for _ in range(steps):
        batch = collator([tokenizer(t, truncation=True, max_length=64) for t in order.choices(texts, k=32)])
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def write_tiny_models(tokenizer_dir: Path, models_dir: Path, texts: list[str], steps: int = 1600) -> None:
    """Tiny base models in the Hub's model layout: built from config with a fixed seed, then MLM-pretrained."""
    import torch
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertForMaskedLM

    from retrievers.models.neobert import NeoBERTConfig, NeoBERTLMHead

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shared = dict(  # both tiny models: same size, same tokenizer
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )
    builds = {
        "tiny-modernbert": lambda: ModernBertForMaskedLM(
            ModernBertConfig(
                global_attn_every_n_layers=2,
                local_attention=64,
                bos_token_id=tokenizer.cls_token_id,
                eos_token_id=tokenizer.sep_token_id,
                **shared,
            )
        ),
        "tiny-neobert": lambda: NeoBERTLMHead(
            NeoBERTConfig(
                vocab_size=shared["vocab_size"],
                hidden_size=shared["hidden_size"],
                intermediate_size=shared["intermediate_size"],
                num_hidden_layers=shared["num_hidden_layers"],
                num_attention_heads=shared["num_attention_heads"],
                max_length=shared["max_position_embeddings"],
                pad_token_id=tokenizer.pad_token_id,
            )
        ),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, build in builds.items():
            torch.manual_seed(FIXTURE_SEED)
            model = build()
            pretrain_mlm(model, tokenizer, texts, steps)
            target = models_dir / name
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)
    finally:
        torch.set_num_threads(threads)


def generate(root: Path) -> None:
    """Write the whole fixture under ``root`` (replacing what is there)."""
    if root.exists():
        shutil.rmtree(root)
    lang_rng = random.Random(FIXTURE_SEED)
    lang = SyntheticLanguage(lang_rng)
    datasets_dir, models_dir = root / "datasets", root / "models"
    write_kd_dataset(
        lang,
        random.Random(FIXTURE_SEED + 1),
        datasets_dir / "tiny-ms-marco-en-bge-gemma",
        n_docs=1500,
        n_queries=800,
        n_candidates=16,
    )
    write_triplets(
        lang, random.Random(FIXTURE_SEED + 2), datasets_dir / "tiny-msmarco-triplets", n_docs=1500, n_triplets=1200
    )
    write_nanobeir(lang, datasets_dir, n_docs=300, n_queries=50)
    tokenizer_dir = root / "tokenizer"
    write_tokenizer(_all_texts(datasets_dir), tokenizer_dir)
    training_text = _all_texts(datasets_dir / "tiny-ms-marco-en-bge-gemma")  # never the evaluation sets
    write_tiny_models(tokenizer_dir, models_dir, training_text)
    (root / "concepts.json").write_text(
        json.dumps(
            [{"doc_word": c.doc_word, "query_word": c.query_word, "topic": c.topic} for c in lang.concepts], indent=0
        )
    )


if __name__ == "__main__":
    import sys

    generate(Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures"))
