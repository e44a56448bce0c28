"""AnnotationFile: lazy JSONL / JSON-list access gives exactly what json.load gives, or a clear error."""
from __future__ import annotations

import json
import pickle
import random
import re
import tracemalloc
from pathlib import Path

import pytest

from distributed_utils import written_later
from fila_train.data import annotations as annotations_module
from fila_train.data.annotations import AnnotationError, AnnotationFile

TRICKY_STRINGS = (
    'say "hi"', 'a \\" b', "ends with a backslash \\", "\\\\\\", "[not a list]", "{not: an object}",
    "}]]}", '"}, {"id": "fake"}', "]\n[", "line\nbreak\ttab\r", "café ☕ 日本語 😀 \u2028 \u0000",
    "", " ", ",", "<image>\n", "\\u0041 is not an escape here",
)
STRUCTURAL = '"\\{}[],: \n\té😀'


def tricky_records() -> list[dict]:
    records = [
        {"id": str(i), "image": f"dir/{i}.png",
         "conversations": [{"from": "human", "value": f"<image>\n{text}"}, {"from": "gpt", "value": text}]}
        for i, text in enumerate(TRICKY_STRINGS)
    ]
    records.append({"id": "nested", "image": ["a.png", "b.png"], "meta": {"boxes": [[1, 2, [3, [4]]], []],
                    "empty": {}, "n": -1.5e3, "flag": True, "none": None, "deep": [[[[{"x": "]"}]]]]}})
    rng = random.Random(0)  # fixed: strings made of structural characters and escapes
    for i in range(30):
        text = "".join(rng.choice(STRUCTURAL) for _ in range(rng.randrange(0, 40)))
        records.append({"id": f"random-{i}", "conversations": [{"from": "gpt", "value": text}],
                        "list": [text, [text], {"k": text}]})
    return records


RECORDS = tricky_records()


def write_jsonl(path: Path, records: list, **dump_options) -> Path:
    path.write_text("".join(json.dumps(r, **dump_options) + "\n" for r in records), encoding="utf-8")
    return path


# name -> writer(path, records)
FORMATS = {
    "jsonl": lambda path, records: write_jsonl(path, records),
    "jsonl_unicode_minified": lambda path, records: write_jsonl(path, records, ensure_ascii=False,
                                                                separators=(",", ":")),
    "jsonl_blank_lines_crlf_no_final_newline": lambda path, records: path.write_bytes(
        b"\r\n\r\n".join(json.dumps(r).encode() for r in records)),
    "json_pretty": lambda path, records: path.write_text(json.dumps(records, indent=2), encoding="utf-8"),
    "json_pretty_unicode": lambda path, records: path.write_text(
        json.dumps(records, indent=4, ensure_ascii=False), encoding="utf-8"),
    "json_minified": lambda path, records: path.write_text(
        json.dumps(records, separators=(",", ":"), ensure_ascii=False), encoding="utf-8"),
    "json_leading_whitespace": lambda path, records: path.write_text(
        "\n \t\r\n" + json.dumps(records) + "\n\n", encoding="utf-8"),
}


def reference_records(path: Path) -> list:
    """What json gives for the whole file: json.load for a list, json.loads per line for JSONL."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle)
    return [json.loads(line) for line in text.split("\n") if line.strip()]  # not splitlines: U+2028


def read_all(annotations: AnnotationFile) -> list[dict]:
    return [annotations[i] for i in range(len(annotations))]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_records_equal_json_load(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "data.json"
    FORMATS[fmt](path, RECORDS)
    assert reference_records(path) == RECORDS  # the writer itself is right
    annotations = AnnotationFile(path)
    assert annotations.is_json_list == fmt.startswith("json_")
    assert len(annotations) == len(RECORDS)
    assert read_all(annotations) == RECORDS
    # Random access in any order, and after pickling (dataloader workers get a pickled copy).
    order = list(range(len(RECORDS)))
    random.Random(1).shuffle(order)
    copy = pickle.loads(pickle.dumps(annotations))
    assert [copy[i] for i in order] == [RECORDS[i] for i in order]


@pytest.mark.parametrize("fmt", ["jsonl", "json_pretty"])
def test_utf8_byte_order_mark_is_accepted(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "bom.json"
    FORMATS[fmt](path, RECORDS[:3])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_all(AnnotationFile(path)) == reference_records(path) == RECORDS[:3]


def test_leading_whitespace_longer_than_a_read_block(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("\n" * 5000 + "".join(json.dumps(r) + "\n" for r in RECORDS[:2]), encoding="utf-8")
    annotations = AnnotationFile(path)
    assert read_all(annotations) == RECORDS[:2]
    assert annotations.location(1) == f"{path}:5002"


def test_jsonl_location_is_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(f"{json.dumps(RECORDS[0])}\n\n   \n{json.dumps(RECORDS[1])}\n", encoding="utf-8")
    annotations = AnnotationFile(path)
    assert [annotations.location(i) for i in range(2)] == [f"{path}:1", f"{path}:4"]


def test_json_list_location_is_file_and_index(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    FORMATS["json_pretty"](path, RECORDS[:3])
    assert AnnotationFile(path).location(2) == f"{path}[2]"


@pytest.mark.parametrize("bad_line", ['{"id": "x", "conversations": [}', '{"id": "x"', "not json", '{"a": 1}}'])
def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path, bad_line: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([json.dumps(RECORDS[0]), "", json.dumps(RECORDS[1]), bad_line,
                               json.dumps(RECORDS[2])]) + "\n", encoding="utf-8")
    annotations = AnnotationFile(path)  # lazy: the index pass does not parse records
    assert len(annotations) == 4
    assert [annotations[i] for i in (0, 1, 3)] == RECORDS[:3]  # the others still load
    with pytest.raises(AnnotationError, match=re.escape(f"{path}:4: malformed JSON")):
        annotations[2]


@pytest.mark.parametrize("line", ["[1, 2]", '"a string"', "42", "null"])
def test_jsonl_record_that_is_not_an_object(tmp_path: Path, line: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match=re.escape(f"{path}:2: a record must be a JSON object")):
        AnnotationFile(path)[1]


def test_every_truncation_of_a_json_list_is_an_error(tmp_path: Path) -> None:
    """Cut anywhere (mid-string, mid-escape, after a comma, before ']'): an error, never fewer records."""
    text = json.dumps(RECORDS[:4], ensure_ascii=False)
    data = text.encode("utf-8")
    path = tmp_path / "cut.json"
    cuts = [cut for cut in range(1, len(data)) if data[:cut].strip()]
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(AnnotationError, match="truncated JSON") as error:
            AnnotationFile(path)
        assert str(path) in str(error.value)


@pytest.mark.parametrize(("text", "message"), [
    ('[{"id": 1}, 5, {"id": 2}]', "element 1"),          # json.load gives 3 elements: never skip one
    ('["a string", {"id": 2}]', "element 0"),
])
def test_json_list_element_that_is_not_an_object_is_reported(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AnnotationError, match=re.escape(message)):
        AnnotationFile(path)


@pytest.mark.parametrize(("text", "message"), [
    ('[{"id": 1} {"id": 2}]', "element 1"),              # missing comma
    ('[{"id": 1},, {"id": 2}]', "element 1"),
    ('[{"id": 1},]', "element 1"),                        # trailing comma
    ('[{"id": 1}]\n[{"id": 2}]', "extra data"),           # two lists
    ('[{"id": 1}] x', "extra data"),
    ('[{"id": 1}]}', "extra data"),
    ('[{"id": 1}}, {"id": 2}]', "extra data"),
])
def test_invalid_json_list_is_an_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(AnnotationError, match=re.escape(message)) as error:
        AnnotationFile(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("content", [b"", b"\n\n  \t\n", b"[]", b"[ \n ]\n", b"\xef\xbb\xbf"])
def test_empty_files_have_no_records(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.json"
    path.write_bytes(content)
    assert len(AnnotationFile(path)) == 0


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.jsonl"))):
        AnnotationFile(tmp_path / "nope.jsonl")


def held_memory(load) -> tuple[object, int]:
    """What ``load()`` returns, and the Python memory still held by it once it returned."""
    tracemalloc.start()
    try:
        result = load()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, held


@pytest.mark.parametrize("fmt", ["jsonl", "json_minified"])
def test_an_open_file_holds_no_parsed_copy_of_its_records(tmp_path: Path, fmt: str) -> None:
    """LLaVA json.loads the whole file on every rank; an AnnotationFile keeps byte spans only (a small
    fraction of the parsed records' memory), and reading a record parses that record."""
    records = [{"id": f"r{i}", "image": f"docs/{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is the total on this receipt?"},
        {"from": "gpt", "value": f"The total is {i}.50, paid in cash."}]} for i in range(20_000)]
    path = tmp_path / f"big.{fmt}"
    FORMATS[fmt](path, records)
    del records
    parsed, parsed_bytes = held_memory(lambda: reference_records(path))
    annotations, index_bytes = held_memory(lambda: AnnotationFile(path))
    assert len(annotations) == len(parsed)
    assert index_bytes < parsed_bytes / 20, (index_bytes, parsed_bytes)
    assert annotations[12345] == parsed[12345]


JSON_LIST_FORMATS = sorted(name for name in FORMATS if name.startswith("json_"))


@pytest.mark.parametrize("window", [97, 1 << 24])
@pytest.mark.parametrize("fmt", JSON_LIST_FORMATS)
def test_a_json_list_is_indexed_by_the_decoder_with_the_scanner_s_spans(tmp_path: Path, fmt: str, window: int,
                                                                        monkeypatch) -> None:
    """A well-formed list takes the fast path (json's decoder finds each element's end) and gets exactly the
    scanner's spans; windows of 97 bytes cut records, escapes and multi-byte characters anywhere."""
    monkeypatch.setattr(annotations_module, "_WINDOW_BYTES", window)
    path = tmp_path / "list.json"
    FORMATS[fmt](path, RECORDS)
    data = path.read_bytes()
    first = annotations_module._first_content_byte(data)
    decoded = annotations_module._json_list_spans_decoded(data, first)
    assert decoded is not None
    assert decoded.tolist() == annotations_module._json_list_spans(data, path, first).tolist()
    assert read_all(AnnotationFile(path)) == reference_records(path)


HUGE_INT = '{"id": 2, "n": ' + "1" * 5000 + "}"  # valid JSON past Python's 4300-digit limit
DEEP = '{"id": 2, "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"  # valid JSON past the recursion limit


@pytest.mark.parametrize("text", ['[{"id": 1} {"id": 2}]', '[{"id": 1},]', '[{"id": 1}] x', '[{"id": 1}, 5]',
                                  '[{"id": 1}, {"id": 2', '[{"id": 1, x}, {"id": 2}]', '[{"id": 1}',
                                  f'[{{"id": 1}}, {HUGE_INT}]', f'[{{"id": 1}}, {DEEP}]'])
def test_anything_but_a_well_formed_list_of_objects_is_left_to_the_scanner(text: str) -> None:
    """The scanner names the problem (or, for a malformed record, leaves it to be read: a skip can count it)."""
    assert annotations_module._json_list_spans_decoded(text.encode(), 0) is None


def test_past_the_first_window_a_bad_or_oversized_record_is_left_to_the_scanner(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(annotations_module, "_WINDOW_BYTES", 97)
    monkeypatch.setattr(annotations_module, "_MAX_WINDOW_BYTES", 400)
    good = json.dumps(RECORDS[:6])
    for bad in ('{"id": "x", oops}', json.dumps({"id": "long", "text": "y" * 1000})):
        data = (good[:-1] + ", " + bad + "]").encode()
        assert annotations_module._json_list_spans_decoded(data, 0) is None
        path = tmp_path / "list.json"
        path.write_bytes(data)
        spans = AnnotationFile(path).spans.tolist()
        assert spans == annotations_module._json_list_spans(data, path, 0).tolist() and len(spans) == 7


@pytest.mark.parametrize("record", [HUGE_INT, DEEP])
@pytest.mark.parametrize("fmt", ["jsonl", "json_minified"])
def test_a_record_python_cannot_read_is_one_record_s_error(tmp_path: Path, record: str, fmt: str) -> None:
    path = tmp_path / "records"
    if fmt == "jsonl":
        path.write_text('{"id": 1}\n' + record + "\n")
    else:
        path.write_text('[{"id": 1}, ' + record + "]")
    annotations = AnnotationFile(path)
    assert len(annotations) == 2 and annotations[0] == {"id": 1}
    with pytest.raises(AnnotationError, match=re.escape(annotations.location(1)) + ": JSON Python cannot read"):
        annotations[1]


def test_a_file_rewritten_after_it_was_indexed_is_named_as_changed_not_its_records_as_malformed(tmp_path: Path) -> None:
    """The converter run again while a run trains (the records reordered): the byte spans found at the start point
    into other text. Before, each read was "a.jsonl:1: malformed JSON" about a line that is fine (under
    --on_bad_sample skip: every record skipped as malformed), or, where the lengths matched, another record."""
    from fila_train.data.annotations import AnnotationChangedError

    records = [{"id": f"r{k}", "conversations": [{"from": "human", "value": "q" * (k + 1)},
                                                {"from": "gpt", "value": "a"}]} for k in range(4)]
    path = write_jsonl(tmp_path / "a.jsonl", records)
    annotation = AnnotationFile(path)
    assert annotation[1]["id"] == "r1"
    write_jsonl(path, records[::-1])
    written_later(path)
    with pytest.raises(AnnotationChangedError, match=r"a.jsonl changed since the run indexed its records"):
        annotation[1]
