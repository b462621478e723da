"""Training sets on disk (Parquet) and the tokenisation of a row into prompt + response."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from eraser_dist.arguments import LoraArguments
from eraser_dist.data import Example, read_examples, write_examples
from eraser_dist.errors import EraserError
from eraser_dist.llm.models import LoraCausalLM, attach_lora, load_base
from eraser_dist.llm.tokenization import ByteTokenizer, tokenize_example

EOS = ByteTokenizer.eos_id
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def sample_rows() -> list[Example]:
    return [
        Example("r0", "What is 0 plus 0?", "0"),
        Example("ü-1", "Zeile mit Umlaut: äöü\nund zweiter Zeile", "ja ✓"),
        Example("r2", "", "empty query"),
        Example("r3", "tab\there", ""),
    ]


def write_table(path, columns: dict, schema: pa.Schema | None = None) -> None:
    pq.write_table(pa.table(columns, schema=schema), path)


# -- read_examples / write_examples ---------------------------------------------------------


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "train.parquet"  # the folder is created
    rows = sample_rows()
    write_examples(path, rows)
    assert read_examples(path) == rows
    assert read_examples(str(path)) == rows
    # Written atomically: no temporary file is left next to it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.parquet"]


def test_write_replaces_existing_file(tmp_path):
    path = tmp_path / "train.parquet"
    write_examples(path, sample_rows())
    write_examples(path, sample_rows()[:1])
    assert read_examples(path) == sample_rows()[:1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.parquet"]


def test_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "train.parquet"
    write_examples(path, sample_rows())
    before = path.read_bytes()

    def broken(table, where, *args, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_examples(path, sample_rows()[:2])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.parquet"]


def test_large_string_columns_and_extra_columns_are_accepted(tmp_path):
    path = tmp_path / "train.parquet"
    schema = pa.schema([("score", pa.float64()), ("response", pa.large_string()),
                        ("id", pa.large_string()), ("query", pa.string())])
    write_table(path, {"score": [0.5, 1.0], "response": ["b", "d"], "id": ["x", "y"],
                       "query": ["a", "c"]}, schema)
    assert read_examples(path) == [Example("x", "a", "b"), Example("y", "c", "d")]


def test_missing_column(tmp_path):
    path = tmp_path / "train.parquet"
    write_table(path, {"id": ["a"], "prompt": ["q"], "answer": ["r"]})
    with pytest.raises(EraserError, match=r"lacks column\(s\) query, response; need id, "
                                          r"query, response"):
        read_examples(path)


@pytest.mark.parametrize("column", ["id", "query", "response"])
def test_non_string_column(tmp_path, column):
    path = tmp_path / "train.parquet"
    columns = {"id": ["a", "b"], "query": ["q1", "q2"], "response": ["r1", "r2"]}
    columns[column] = [1, 2]
    write_table(path, columns)
    with pytest.raises(EraserError, match=f"column '{column}' must hold strings, not int64"):
        read_examples(path)


@pytest.mark.parametrize("column", ["id", "query", "response"])
def test_null_values(tmp_path, column):
    path = tmp_path / "train.parquet"
    columns = {"id": ["a", "b", "c"], "query": ["q1", "q2", "q3"], "response": ["1", "2", "3"]}
    columns[column] = [columns[column][0], None, None]
    write_table(path, columns)
    with pytest.raises(EraserError, match=f"column '{column}' has 2 missing value"):
        read_examples(path)


def test_duplicate_ids(tmp_path):
    path = tmp_path / "train.parquet"
    write_examples(path, [Example("b", "q", "r"), Example("a", "q", "r"),
                          Example("b", "q2", "r2"), Example("a", "q3", "r3"),
                          Example("c", "q", "r")])
    with pytest.raises(EraserError, match="duplicate id.*: a, b$"):
        read_examples(path)


def test_empty_table(tmp_path):
    path = tmp_path / "train.parquet"
    schema = pa.schema([(c, pa.string()) for c in ("id", "query", "response")])
    write_table(path, {"id": [], "query": [], "response": []}, schema)
    with pytest.raises(EraserError, match="has no rows"):
        read_examples(path)


def test_empty_written_set_is_rejected(tmp_path):
    path = tmp_path / "train.parquet"
    write_examples(path, [])
    with pytest.raises(EraserError):
        read_examples(path)


@pytest.mark.parametrize("content", [b"", b"id,query,response\na,b,c\n", b"PAR1" + bytes(64)])
def test_not_a_parquet_file(tmp_path, content):
    path = tmp_path / "train.parquet"
    path.write_bytes(content)
    with pytest.raises(EraserError, match="is not a readable Parquet file"):
        read_examples(path)


def test_missing_file(tmp_path):
    with pytest.raises(EraserError, match="does not exist"):
        read_examples(tmp_path / "nope.parquet")
    with pytest.raises(EraserError, match="does not exist"):
        read_examples(tmp_path)  # a folder is not a data file


# -- tokenize_example -----------------------------------------------------------------------


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def test_tokenize_layout_and_determinism():
    row = Example("a", "What is 2 plus 2?", "4")
    ids, n_prompt = tokenize_example(ByteTokenizer(), row, 256)
    assert ids == encode("What is 2 plus 2?\n") + encode("4") + [EOS]
    assert n_prompt == len(encode("What is 2 plus 2?\n"))
    # Same row (also as another object, with another tokenizer instance) → same tokens.
    assert tokenize_example(ByteTokenizer(), row, 256) == (ids, n_prompt)
    assert tokenize_example(ByteTokenizer(), Example("b", row.query, row.response), 256) == (
        ids, n_prompt)


def test_truncation_drops_oldest_prompt_tokens_first():
    row = Example("a", "abcdefghij", "xyz")
    ids, n_prompt = tokenize_example(ByteTokenizer(), row, 8)
    # response + EOS (4 tokens) is kept whole; the prompt keeps its last 4 tokens.
    assert ids == encode("hij\n") + encode("xyz") + [EOS]
    assert n_prompt == 4
    # Exactly fitting: nothing is dropped.
    full, n_full = tokenize_example(ByteTokenizer(), row, 15)
    assert full == encode("abcdefghij\n") + encode("xyz") + [EOS] and n_full == 11
    ids14, n14 = tokenize_example(ByteTokenizer(), row, 14)
    assert ids14 == full[1:] and n14 == 10


def test_truncation_of_a_too_long_response_keeps_one_prompt_token():
    row = Example("a", "question", "0123456789")
    ids, n_prompt = tokenize_example(ByteTokenizer(), row, 6)
    assert ids == encode("\n") + encode("01234")
    assert n_prompt == 1


def test_tokenize_rejects_tiny_max_length():
    with pytest.raises(EraserError, match="max_length must be at least 2"):
        tokenize_example(ByteTokenizer(), Example("a", "q", "r"), 1)


@pytest.fixture(scope="module")
def tiny_model():
    base = load_base("tiny-llama")
    return LoraCausalLM(attach_lora(base, LoraArguments(rank=2)), base.tokenizer, 256)


def scored_targets(batch, i: int) -> list[int]:
    """The tokens that follow row i's scored positions in its own sequence."""
    scored = batch["scored"][i]
    following = batch["input_ids"][i, batch["positions"][i][scored] + 1]
    assert torch.equal(batch["targets"][i][scored], following)
    return following.tolist()


def test_scored_positions_are_exactly_response_and_eos(tiny_model):
    rows = [Example("a", "What is 12 plus 12?", "24"),
            Example("b", "Hi", "a much longer response"),
            Example("c", "Long long long question here", "")]
    batch = tiny_model.collate(rows)
    length = max(len(r.query) + 1 + len(r.response) + 1 for r in rows)
    assert batch["input_ids"].shape == (3, length)
    longest_response = max(len(r.response) + 1 for r in rows)
    assert batch["positions"].shape == batch["scored"].shape == (3, longest_response)
    for i, row in enumerate(rows):
        assert scored_targets(batch, i) == encode(row.response) + [EOS]
        n = len(row.query) + 1 + len(row.response) + 1
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (length - n)
        assert (batch["input_ids"][i, n:] == ByteTokenizer.pad_id).all()
        # the scored positions are a contiguous run that starts at the last prompt token
        where = batch["positions"][i][batch["scored"][i]].tolist()
        assert where == list(range(len(row.query), n - 1))
    # A row's tokens do not depend on the batch it is in.
    alone = tiny_model.collate(rows[:1])
    n0 = int(alone["attention_mask"][0].sum())
    assert torch.equal(alone["input_ids"][0], batch["input_ids"][0, :n0])


def test_scored_positions_after_truncation():
    base = load_base("tiny-llama")
    model = LoraCausalLM(attach_lora(base, LoraArguments(rank=2)), base.tokenizer, 10)
    batch = model.collate([Example("a", "a rather long question", "yes")])
    assert batch["input_ids"][0].tolist() == encode("stion\n") + encode("yes") + [EOS]
    assert batch["positions"][0].tolist() == [5, 6, 7, 8]
    assert scored_targets(batch, 0) == encode("yes") + [EOS]


def test_losses_from_scored_logits_equal_those_of_the_full_sequence(tiny_model):
    """Logits are computed at the scored positions only; the per-row losses must be the mean
    cross-entropy of the response tokens and EOS read off the full sequence's logits."""
    rows = [Example("a", "What is 12 plus 12?", "24"), Example("b", "Hi", "a longer one"),
            Example("c", "Long long long question here", "")]
    batch = tiny_model.collate(rows)
    with torch.no_grad():
        losses = tiny_model.losses(tiny_model.outputs(batch), batch)
        full = tiny_model.peft_model(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]).logits
    for i, row in enumerate(rows):
        start, ids = len(row.query), batch["input_ids"][i]
        count = len(row.response) + 1
        nll = torch.nn.functional.cross_entropy(full[i, start : start + count],
                                                ids[start + 1 : start + 1 + count])
        assert float(losses[i]) == pytest.approx(float(nll), rel=1e-5)
