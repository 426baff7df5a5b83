"""Input validation at the boundary: generated well-formed tables pass, each kind of malformed table is refused with
its own one-line message (hypothesis builds both), and model folders and params are checked beyond their types."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrievers.config import ConfigError, parse_params
from retrievers.data.kd import attach_positions
from retrievers.data.validate import check_evaluation_set, check_kd_tables, check_model_folder, check_triplets
from retrievers.faults import InputError

from .conftest import REPO

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
words = st.text(alphabet="abcdefghij klmnop", min_size=1, max_size=40).filter(lambda t: t.strip())


@st.composite
def kd_sets(draw):
    """A well-formed KD set (queries, documents, train) as Python columns, ids integers or strings."""
    n_docs = draw(st.integers(2, 25))
    n_queries = draw(st.integers(1, 12))
    as_str = draw(st.booleans())
    ident = (lambda i: f"id{i}") if as_str else (lambda i: i * 7 + 3)
    doc_ids = [ident(i) for i in range(n_docs)]
    query_ids = [ident(1000 + i) for i in range(n_queries)]
    rows = []
    for qid in query_ids:
        chosen = draw(st.lists(st.sampled_from(doc_ids), min_size=1, max_size=8))
        scores = draw(st.lists(st.floats(-50, 50, allow_nan=False), min_size=len(chosen), max_size=len(chosen)))
        rows.append((qid, chosen, scores))
    return {
        "queries": {"query_id": query_ids, "text": [draw(words) for _ in query_ids]},
        "documents": {"document_id": doc_ids, "text": [draw(words) for _ in doc_ids]},
        "train": {"query_id": [r[0] for r in rows], "document_ids": [r[1] for r in rows],
                  "scores": [r[2] for r in rows]},
    }


def _tables(kd) -> tuple[pa.Table, pa.Table, pa.Table]:
    queries, documents, train = pa.table(kd["queries"]), pa.table(kd["documents"]), pa.table(kd["train"])
    for column, value_type in (("document_ids", documents.schema.field("document_id").type), ("scores", pa.float64())):
        if column in train.column_names and train.schema.field(column).type == pa.list_(pa.null()):  # all lists empty
            train = train.set_column(train.column_names.index(column), column,
                                     train.column(column).cast(pa.list_(value_type)))
    return queries, documents, train


def _check(kd) -> None:
    queries, documents, train = _tables(kd)
    check_kd_tables(Path("data/kd"), "train", queries, documents, train)
    attach_positions(queries, documents, train, "data/kd config 'train'")


# Each malformation: (name, how to break a well-formed set given a row index, the message it must get).
def _nan(kd, row):
    kd["train"]["scores"][row][0] = math.nan


def _inf(kd, row):
    kd["train"]["scores"][row][-1] = -math.inf


def _short_scores(kd, row):
    kd["train"]["scores"][row] = kd["train"]["scores"][row][:-1] or [1.0, 2.0]
    if len(kd["train"]["scores"][row]) == len(kd["train"]["document_ids"][row]):
        kd["train"]["scores"][row].append(0.0)


def _dangling_document(kd, row):
    kd["train"]["document_ids"][row][0] = "missing" if isinstance(kd["documents"]["document_id"][0], str) else -1


def _dangling_query(kd, row):
    kd["train"]["query_id"][row] = "missing" if isinstance(kd["queries"]["query_id"][0], str) else -1


def _empty_query(kd, row):
    kd["queries"]["text"][row % len(kd["queries"]["text"])] = " \t "


def _empty_document(kd, row):
    kd["documents"]["text"][row % len(kd["documents"]["text"])] = ""


def _null_document_text(kd, row):
    kd["documents"]["text"][row % len(kd["documents"]["text"])] = None


def _duplicate_query_row(kd, row):
    for column in kd["train"]:
        kd["train"][column].append(kd["train"][column][row])


def _duplicate_document_id(kd, row):
    docs = kd["documents"]
    docs["document_id"].append(docs["document_id"][row % len(docs["document_id"])])
    docs["text"].append("another text")


def _missing_column(kd, row):
    del kd["train"]["scores"]


def _no_documents(kd, row):
    kd["train"]["document_ids"][row], kd["train"]["scores"][row] = [], []


MALFORMATIONS = {
    "nan score": (_nan, r"config 'train': row \d+ \(query_id .+\): score 0 is nan \(teacher scores must be finite\)"),
    "infinite score": (_inf, r"score \d+ is -inf \(teacher scores must be finite\)"),
    "lengths differ": (_short_scores, r"row \d+ \(query_id .+\): \d+ document_ids but \d+ scores"),
    "dangling document": (_dangling_document, r"row \d+: document_id .+ is referenced by the scores but missing"),
    "dangling query": (_dangling_query, r"row \d+: query_id .+ is referenced by the scores but missing"),
    "empty query": (_empty_query, r"config 'queries': row \d+ \(query_id .+\): text is empty"),
    "empty document": (_empty_document, r"config 'documents': row \d+ \(document_id .+\): text is empty"),
    "null text": (_null_document_text, r"config 'documents': row \d+ \(document_id .+\): text is null"),
    "duplicate query row": (_duplicate_query_row, r"config 'train': query_id .+ appears more than once \(rows"),
    "duplicate document id": (_duplicate_document_id, r"config 'documents': document_id .+ appears more than once"),
    "missing column": (_missing_column, r"config 'train': missing column\(s\) \['scores'\]"),
    "no documents": (_no_documents, r"row \d+ \(query_id .+\): no scored documents"),
}


@SETTINGS
@given(kd=kd_sets())
def test_well_formed_kd_sets_pass(kd):
    _check(kd)


@SETTINGS
@given(kd=kd_sets(), name=st.sampled_from(sorted(MALFORMATIONS)), data=st.data())
def test_each_malformed_kd_set_is_refused_with_its_message(kd, name, data):
    row = data.draw(st.integers(0, len(kd["train"]["query_id"]) - 1))
    breaks, message = MALFORMATIONS[name]
    breaks(kd, row)
    with pytest.raises(InputError, match=message) as error:
        _check(kd)
    text = str(error.value)
    assert "\n" not in text and text.startswith("data/kd config ")
    assert "fix or drop it in the source" in text or "drop the duplicates" in text


def test_the_row_named_is_the_broken_one():
    kd = {"queries": {"query_id": [1, 2, 3], "text": ["a", "b", "c"]},
          "documents": {"document_id": [10, 11], "text": ["x", "y"]},
          "train": {"query_id": [1, 2, 3], "document_ids": [[10, 11], [11, 10], [10]],
                    "scores": [[1.0, 0.5], [0.2, float("nan")], [1.0]]}}
    with pytest.raises(InputError, match=r"row 1 \(query_id 2\): score 1 is nan"):
        _check(kd)


def test_ids_of_different_kinds_are_refused():
    kd = {"queries": {"query_id": ["1"], "text": ["a"]}, "documents": {"document_id": [10], "text": ["x"]},
          "train": {"query_id": [1], "document_ids": [[10]], "scores": [[1.0]]}}
    with pytest.raises(InputError, match=r"ids are int64 in one table and string in the other"):
        _check(kd)


def test_scores_of_a_wrong_type_are_refused():
    kd = {"queries": {"query_id": [1], "text": ["a"]}, "documents": {"document_id": [10], "text": ["x"]},
          "train": {"query_id": [1], "document_ids": [[10]], "scores": [["high"]]}}
    with pytest.raises(InputError, match=r"column 'scores' has type list<item: string>, expected lists of floats"):
        _check(kd)


@st.composite
def triplet_tables(draw):
    n = draw(st.integers(1, 15))
    return {c: [draw(words) for _ in range(n)] for c in ("query", "positive", "negative")}


@SETTINGS
@given(triplets=triplet_tables(), column=st.sampled_from(["query", "positive", "negative"]),
       blank=st.sampled_from(["", "  ", None, "drop"]), data=st.data())
def test_triplets_pass_or_name_the_bad_column(triplets, column, blank, data):
    check_triplets(pa.table(triplets), "data/t")
    if blank == "drop":
        del triplets[column]
        message = rf"data/t: missing column\(s\) \['{column}'\]"
    else:
        row = data.draw(st.integers(0, len(triplets[column]) - 1))
        triplets[column][row] = blank
        message = rf"data/t: row {row}: {column} is {'null' if blank is None else 'empty'}"
    with pytest.raises(InputError, match=message):
        check_triplets(pa.table(triplets), "data/t")


@st.composite
def evaluation_sets(draw):
    n_docs, n_queries = draw(st.integers(1, 20)), draw(st.integers(1, 10))
    corpus = {"_id": [f"d{i}" for i in range(n_docs)], "text": [draw(words) for _ in range(n_docs)]}
    queries = {"_id": [f"q{i}" for i in range(n_queries)], "text": [draw(words) for _ in range(n_queries)]}
    pairs = draw(st.lists(st.tuples(st.sampled_from(queries["_id"]), st.sampled_from(corpus["_id"])), min_size=1))
    return corpus, queries, {"query-id": [p[0] for p in pairs], "corpus-id": [p[1] for p in pairs]}


@SETTINGS
@given(sets=evaluation_sets(), fault=st.sampled_from(["dangling corpus", "dangling query", "duplicate", "null"]),
       data=st.data())
def test_evaluation_sets_pass_or_are_refused(sets, fault, data):
    corpus, queries, qrels = sets
    check_evaluation_set(pa.table(corpus), pa.table(queries), pa.table(qrels), "NanoX")
    row = data.draw(st.integers(0, len(qrels["query-id"]) - 1))
    if fault == "dangling corpus":
        qrels["corpus-id"][row] = "nowhere"
        message = rf"NanoX qrels: row {row}: corpus-id 'nowhere' is not in NanoX corpus"
    elif fault == "dangling query":
        qrels["query-id"][row] = "nowhere"
        message = rf"NanoX qrels: row {row}: query-id 'nowhere' is not in NanoX queries"
    elif fault == "duplicate":
        corpus["_id"].append(corpus["_id"][0])
        corpus["text"].append("again")
        message = r"NanoX corpus: _id 'd0' appears more than once \(rows 0 and"
    else:
        queries["text"][0] = None
        message = r"NanoX queries: row 0 \(_id 'q0'\): text is null"
    with pytest.raises(InputError, match=message):
        check_evaluation_set(pa.table(corpus), pa.table(queries), pa.table(qrels), "NanoX")


def test_empty_corpus_texts_are_allowed_as_the_evaluators_drop_them():
    corpus = pa.table({"_id": ["d0", "d1"], "text": ["", "some text"]})
    check_evaluation_set(corpus, pa.table({"_id": ["q"], "text": ["a"]}),
                         pa.table({"query-id": ["q"], "corpus-id": ["d1"]}), "NanoX")


MODEL = REPO / "fixtures" / "models" / "tiny-modernbert"


@pytest.mark.parametrize("damage, message", [
    (lambda f: os.truncate(f / "model.safetensors", os.path.getsize(f / "model.safetensors") - 1000),
     r"model.safetensors: unreadable weights \(Error while deserializing header: incomplete metadata"),
    (lambda f: os.truncate(f / "model.safetensors", 5), r"model.safetensors: unreadable weights"),
    (lambda f: (f / "model.safetensors").unlink(), r"no model weights \(\*.safetensors\)"),
    (lambda f: (f / "config.json").write_text('{"hidden_size": 8,'), r"config.json: not valid JSON"),
])
def test_a_damaged_model_folder_is_named(tmp_path, damage, message):
    folder = tmp_path / "model"
    shutil.copytree(MODEL, folder)
    check_model_folder(folder, "re-download it")
    damage(folder)
    with pytest.raises(InputError, match=message) as error:
        check_model_folder(folder, "re-download it")
    assert str(error.value).endswith("; re-download it") and str(folder) in str(error.value)


def _params(**phase_args):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["phases"]["modernbert-xtr"]["args"].update(phase_args)
    return raw


@pytest.mark.parametrize("key, value, message", [
    ("learning_rate", -1e-4, "learning_rate: Input should be greater than 0"),
    ("learning_rate", float("nan"), "learning_rate: Input should be a finite number"),
    ("per_device_train_batch_size", 0, "per_device_train_batch_size: Input should be greater than or equal to 1"),
    ("max_steps", 0, "max_steps: Value error, must be -1"),
    ("warmup_ratio", 1.5, "warmup_ratio: Input should be less than 1"),
    ("save_steps", 0, "save_steps: Input should be greater than or equal to 1"),
])
def test_params_out_of_range_name_their_key(key, value, message):
    with pytest.raises(ConfigError, match=f"params.yaml: phases.modernbert-xtr.args.{message}"):
        parse_params(_params(**{key: value}))


def test_n_ways_below_two_and_unknown_loss_are_refused():
    raw = _params()
    raw["phases"]["modernbert-xtr"]["n_ways"] = 1
    with pytest.raises(ConfigError, match="phases.modernbert-xtr.n_ways: Input should be greater than or equal to 2"):
        parse_params(raw)
    raw = _params()
    raw["phases"]["neobert-splade"]["loss"] = "triplet"
    with pytest.raises(ConfigError, match="phases.neobert-splade.loss: Input should be 'mnrl'"):
        parse_params(raw)


def test_unknown_optimizer_and_schedule_names_are_refused_before_training():
    from retrievers.paths import Workspace
    from retrievers.train.common import check_phase_inputs

    params = parse_params(_params(optim="adamw_typo"))
    with pytest.raises(InputError, match=r"phases.modernbert-xtr.args.optim: unknown 'adamw_typo'; use one of"):
        check_phase_inputs(Workspace(REPO), params.phases["modernbert-xtr"], "modernbert-xtr")
    params = parse_params(_params(lr_scheduler_type="wsd"))
    with pytest.raises(InputError, match=r"args.lr_scheduler_type: unknown 'wsd'; use one of linear, cosine"):
        check_phase_inputs(Workspace(REPO), params.phases["modernbert-xtr"], "modernbert-xtr")


def test_n_ways_above_the_data_is_refused():
    from retrievers.data.kd import KDDataError, kd_training_dataset, load_kd_tables

    tables = load_kd_tables(REPO / "fixtures" / "datasets" / "tiny-ms-marco-en-bge-gemma", "train")
    with pytest.raises(KDDataError, match=r"fewer than n_ways=999 scored documents; lower n_ways in params.yaml"):
        kd_training_dataset(tables, n_ways=999)
