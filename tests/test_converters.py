"""`fila-train data convert SOURCE`: fixtures shaped like each public release, run through the real CLI.

The ``*_release`` / ``*_file`` helpers write each release's annotation files under their released
names; test_shipped_layout.py reuses them to lay out a whole playground/data tree.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fila_train.data.converters.cli import main
from fila_train.data.validation import check_record

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def convert(tmp_path: Path, source: str, *args: str) -> list[dict]:
    output = tmp_path / "out" / f"{source}.jsonl"
    assert main([source, *args, "--output", str(output)]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    for index, record in enumerate(records):
        check_record(record, f"{output}:{index + 1}")
    return records


def qa(record_id: str, image: str, *turns: tuple[str, str], instruction: str = SHORT) -> dict:
    conversations = []
    for index, (question, answer) in enumerate(turns):
        human = ("<image>\n" if index == 0 else "") + question + (f"\n{instruction}" if instruction else "")
        conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    return {"id": record_id, "image": image, "conversations": conversations}


# ---------------------------------------------------------------- document VQA (RRC releases)

def docvqa_entry(question_id: int, question: str, page: str, answers: list) -> dict:
    return {"questionId": question_id, "question": question, "question_types": ["handwritten", "form"],
            "image": f"documents/{page}.png", "docId": 14465, "ucsf_document_id": page.split("_")[0],
            "ucsf_document_page_no": page.split("_")[1], "answers": answers, "data_split": "train"}


def docvqa_file(folder: Path, entries: list[dict]) -> Path:
    return write_json(folder / "train_v1.0_withQT.json", {
        "dataset_name": "SP-DocVQA", "dataset_split": "train", "dataset_version": "1.0", "data": entries})


def docvqa_release(folder: Path) -> Path:
    return docvqa_file(folder, [
        docvqa_entry(337, "what is the date mentioned in this letter?", "xnbl0037_1", ["1/8/93"]),
        docvqa_entry(338, "  what is the contact person name mentioned in letter?", "xnbl0037_1",
                     ["P. Carter", "p. carter"]),
        docvqa_entry(339, "Which corporation's letterhead is this?", "mxcj0037_1", ["", " Brown & Williamson "]),
    ])


def test_docvqa_first_answer_folder_input_and_prefix(tmp_path):
    docvqa_release(tmp_path / "spdocvqa")
    records = convert(tmp_path, "docvqa", "--input", str(tmp_path / "spdocvqa"), "--split", "train",
                      "--image_prefix", "docvqa/train")
    assert records[0] == {
        "id": "docvqa_337", "image": "docvqa/train/documents/xnbl0037_1.png",
        "conversations": [
            {"from": "human", "value": "<image>\nwhat is the date mentioned in this letter?\n"
                                       "Answer the question using a single word or phrase."},
            {"from": "gpt", "value": "1/8/93"}]}
    assert records[1:] == [
        qa("docvqa_338", "docvqa/train/documents/xnbl0037_1.png",
           ("what is the contact person name mentioned in letter?", "P. Carter")),
        qa("docvqa_339", "docvqa/train/documents/mxcj0037_1.png",
           ("Which corporation's letterhead is this?", "Brown & Williamson")),  # first non-empty answer
    ]


def infographicvqa_file(folder: Path) -> Path:
    entry = {"questionId": 98313, "question": "Which social platform has heavy female audience?",
             "image_local_name": "37313.jpeg", "image_url": "https://example.org/37313.jpeg",
             "ocr_output_file": "37313.json", "answers": ["pinterest"], "answer_type": ["single span"],
             "evidence": ["text"], "operation/reasoning": []}
    second = {**entry, "questionId": 98314, "question": "How many platforms are compared?",
              "answers": ["4", "four"], "answer_type": ["non-extractive"], "operation/reasoning": ["counting"]}
    return write_json(folder / "infographicsVQA_train_v1.0.json",
                      {"dataset_name": "infographicVQA", "dataset_version": "1.0", "data": [entry, second]})


def test_infographicvqa(tmp_path):
    path = infographicvqa_file(tmp_path)
    records = convert(tmp_path, "infographicvqa", "--input", str(path), "--instruction", "")
    assert records == [
        {"id": "infographicvqa_98313", "image": "37313.jpeg", "conversations": [
            {"from": "human", "value": "<image>\nWhich social platform has heavy female audience?"},
            {"from": "gpt", "value": "pinterest"}]},
        qa("infographicvqa_98314", "37313.jpeg", ("How many platforms are compared?", "4"), instruction=""),
    ]


def stvqa_file(folder: Path) -> Path:
    entry = {"question_id": 3, "question": "What is the brand of the drink?", "dataset": "coco-text",
             "file_name": "COCO_train2014_000000313224.jpg",
             "file_path": "coco-text/COCO_train2014_000000313224.jpg", "set_name": "train",
             "answers": ["coca-cola", "coca cola", "coca cola"]}
    return write_json(folder / "train_task_3.json", {"dataset_name": "ST-VQA", "data": [entry]})


def test_stvqa_most_common_answer(tmp_path):
    path = stvqa_file(tmp_path)
    assert convert(tmp_path, "stvqa", "--input", str(tmp_path)) == [
        qa("stvqa_3", "coco-text/COCO_train2014_000000313224.jpg", ("What is the brand of the drink?", "coca cola"))]
    assert path.is_file()


# ---------------------------------------------------------------- TextVQA family

def textvqa_entry(question_id: int, image_id: str, question: str, answers: list[str], set_name="train") -> dict:
    return {"question": question, "image_id": image_id, "image_classes": ["Brown bear", "Billboard"],
            "flickr_original_url": f"https://farm2.staticflickr.com/{image_id}_o.jpg",
            "flickr_300k_url": f"https://c4.staticflickr.com/{image_id}_z.jpg", "image_width": 1024,
            "image_height": 664, "answers": answers, "question_tokens": question.rstrip("?").split(),
            "question_id": question_id, "set_name": set_name}


def textvqa_file(folder: Path) -> Path:
    return write_json(folder / "TextVQA_0.5.1_train.json", {
        "dataset_type": "train", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [
            textvqa_entry(34602, "0054c91397f2fe05", "what is the brand of this camera?",
                          ["nous les gosses", "dakota", "clos culombu", "dakota digital", "dakota",
                           "dakota", "dakota digital", "dakota digital", "dakota", "dakota digital"]),
            textvqa_entry(34603, "005635e119b9f32f", "what does the small white text spell?",
                          ["copenhagen"] * 4 + ["copenhagen."] * 4 + ["thursday", "unanswerable"]),
            textvqa_entry(34604, "0054c91397f2fe05", "what is the camera model?", ["d-1"] * 10, set_name="val"),
        ]})


def test_textvqa_most_common_answer_ties_and_grouping(tmp_path):
    path = textvqa_file(tmp_path)
    one_per_question = convert(tmp_path, "textvqa", "--input", str(path))
    assert one_per_question == [
        # dakota and "dakota digital" tie 4-4: the one listed first wins
        qa("textvqa_34602", "train_images/0054c91397f2fe05.jpg", ("what is the brand of this camera?", "dakota")),
        qa("textvqa_34603", "train_images/005635e119b9f32f.jpg", ("what does the small white text spell?",
                                                                  "copenhagen")),
        qa("textvqa_34604", "train_images/0054c91397f2fe05.jpg", ("what is the camera model?", "d-1")),
    ]
    grouped = convert(tmp_path, "textvqa", "--input", str(path), "--group_by_image")
    assert grouped == [
        qa("textvqa_34602", "train_images/0054c91397f2fe05.jpg",
           ("what is the brand of this camera?", "dakota"), ("what is the camera model?", "d-1")),
        qa("textvqa_34603", "train_images/005635e119b9f32f.jpg",
           ("what does the small white text spell?", "copenhagen")),
    ]
    assert grouped[0]["conversations"][2]["value"] == f"what is the camera model?\n{SHORT}"  # <image> once


def textcaps_file(folder: Path) -> Path:
    def caption(caption_id: int, text: str) -> dict:
        return {"image_id": "011e7e629fb9ae7b", "image_classes": ["Vehicle"], "set_name": "train",
                "image_name": "011e7e629fb9ae7b", "image_path": "train/011e7e629fb9ae7b.jpg",
                "image_width": 1024, "image_height": 730, "caption_id": caption_id, "caption_str": text,
                "caption_tokens": text.split(), "reference_strs": ["A bus says Airport.", "Bus 61 to the airport."],
                "reference_tokens": [["a", "bus"], ["bus", "61"]]}
    return write_json(folder / "TextCaps_0.1_train.json", {
        "dataset_type": "train", "dataset_name": "textcaps", "dataset_version": "0.1",
        "data": [caption(1, "A bus says Airport."), caption(2, " Bus 61 to the airport. ")]})


def test_textcaps_caption_records(tmp_path):
    path = textcaps_file(tmp_path)
    assert convert(tmp_path, "textcaps", "--input", str(path), "--image_prefix", "textvqa") == [
        {"id": "textcaps_011e7e629fb9ae7b_1", "image": "textvqa/train_images/011e7e629fb9ae7b.jpg",
         "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A bus says Airport."}]},
        {"id": "textcaps_011e7e629fb9ae7b_2", "image": "textvqa/train_images/011e7e629fb9ae7b.jpg",
         "conversations": [{"from": "human", "value": "<image>"},
                           {"from": "gpt", "value": "Bus 61 to the airport."}]},
    ]


# ---------------------------------------------------------------- charts

def chartqa_release(dataset: Path) -> Path:
    """``ChartQA Dataset/`` with its train split's two question files; returns the split folder."""
    split = dataset / "train"
    write_json(split / "train_human.json", [
        {"imgname": "41699051005347.png", "query": "How many food item is shown in the bar graph?", "label": "14"}])
    write_json(split / "train_augmented.json", [
        {"imgname": "two_col_1.png", "query": "What was the revenue in 2019?", "label": "30.5"},
        {"imgname": "two_col_1.png", "query": "How many bars are there?", "label": 12}])
    return split


def test_chartqa_subsets_from_the_dataset_folder(tmp_path):
    split = chartqa_release(tmp_path / "ChartQA Dataset")
    both = convert(tmp_path, "chartqa", "--input", str(tmp_path / "ChartQA Dataset"))
    assert both == [
        qa("chartqa_train_human_0", "png/41699051005347.png", ("How many food item is shown in the bar graph?", "14")),
        qa("chartqa_train_augmented_0", "png/two_col_1.png", ("What was the revenue in 2019?", "30.5")),
        qa("chartqa_train_augmented_1", "png/two_col_1.png", ("How many bars are there?", "12")),
    ]
    human = convert(tmp_path, "chartqa", "--input", str(split), "--subset", "human")
    assert human == both[:1]


def dvqa_file(folder: Path) -> Path:
    """``qa/train_qa.json`` of the release's QA archive."""
    return write_json(folder / "qa" / "train_qa.json", [
        {"question": "What is the label of the second bar from the bottom in each group?",
         "question_id": 120000013, "template_id": "data", "answer": "bond", "image": "bar_train_00200000.png",
         "answer_bbox": [295.4375, 379.85, 54.5, 35.0]},
        {"question": "Are the values in the chart presented in a logarithmic scale?", "question_id": 120000014,
         "template_id": "structure", "answer": "no", "image": "bar_train_00200000.png", "answer_bbox": []}])


def test_dvqa(tmp_path):
    path = dvqa_file(tmp_path)
    assert convert(tmp_path, "dvqa", "--input", str(tmp_path), "--image_prefix", "dvqa/images") == [
        qa("dvqa_120000013", "dvqa/images/bar_train_00200000.png",
           ("What is the label of the second bar from the bottom in each group?", "bond")),
        qa("dvqa_120000014", "dvqa/images/bar_train_00200000.png",
           ("Are the values in the chart presented in a logarithmic scale?", "no")),
    ]
    assert path.is_file()
    # The file name says the split (its entries do not): before, val questions became training data, exit 0.
    val = write_json(tmp_path / "val" / "qa" / "val_easy_qa.json", json.loads(path.read_text()))
    assert main(["dvqa", "--input", str(val), "--output", str(tmp_path / "x.jsonl")]) == 1
    assert convert(tmp_path, "dvqa", "--input", str(val), "--split", "val_easy")[0]["id"] == "dvqa_120000013"


@pytest.mark.parametrize("second, third, error, report", [
    # Only a grouped record's id (its first question's) was checked: the repeat went into the record twice.
    ((4, "Who wrote it?", ["P. Carter"]), (1, "What is the date?", ["1/8/93"]),
     "data[2]: question id '1' was already read from", "1 x duplicate id"),
    # One bad question dropped its image's good ones with it, and the error named the group's first question.
    ((2, "see <image> here", ["x"]), (3, "Who wrote it?", ["P. Carter"]), "data[1]", "skipped: 1"),
], ids=["repeated_id", "bad_question"])
def test_grouped_by_image_each_question_is_checked_and_skipped_alone(tmp_path, capsys, second, third, error, report):
    """Before: exit 0 with the repeat asked twice in one record; a bad question took its image's others with it."""
    folder = tmp_path / "spdocvqa"
    docvqa_file(folder, [docvqa_entry(1, "What is the date?", "xnbl0037_1", ["1/8/93"]),
                         docvqa_entry(*second[:2], "xnbl0037_1", second[2]),
                         docvqa_entry(*third[:2], "xnbl0037_1", third[2])])
    output = tmp_path / "grouped.jsonl"
    assert main(["docvqa", "--input", str(folder), "--output", str(output), "--group_by_image"]) == 1
    assert error in capsys.readouterr().err and not output.exists()
    assert main(["docvqa", "--input", str(folder), "--output", str(output), "--group_by_image",
                 "--on_bad_sample", "skip"]) == 0
    assert report in capsys.readouterr().out
    [record] = [json.loads(line) for line in output.read_text().splitlines()]
    assert [turn["value"] for turn in record["conversations"][1::2]] == ["1/8/93", "P. Carter"]


def test_an_input_that_is_the_output_or_given_twice_is_refused(tmp_path, capsys):
    """Before, converting into the input folder and running again read the earlier output as input (8 records
    from 4), and an input given twice was read twice, exit 0."""
    folder = tmp_path / "llava"
    folder.mkdir()
    (folder / "mix.jsonl").write_text(json.dumps(llava_record("a", "x.png", "<image>\nQ?", "A.")) + "\n")
    output = folder / "converted.jsonl"
    assert main(["llava", "--input", str(folder), "--output", str(output)]) == 0
    assert main(["llava", "--input", str(folder), "--output", str(output)]) == 1
    assert f"--input {folder} holds the --output file {output}" in capsys.readouterr().err
    assert main(["llava", "--input", str(folder / "mix.jsonl"), str(folder / "mix.jsonl"), "--output",
                 str(tmp_path / "twice.jsonl")]) == 1
    assert f"{folder / 'mix.jsonl'} is given twice" in capsys.readouterr().err


# ---------------------------------------------------------------- OCR-VQA

def ocrvqa_file(folder: Path) -> Path:
    return write_json(folder / "dataset.json", {
        "761183272": {"imageURL": "http://ecx.images-amazon.com/images/I/61Y5cOdHJbL.jpg",
                      "questions": ["Who wrote this book?", "What is the title of this book?",
                                    "Is this a games related book?"],
                      "answers": ["Sandra Boynton", "Mom's Family Wall Calendar 2016", "No"],
                      "title": "Mom's Family Wall Calendar 2016", "authorName": "Sandra Boynton",
                      "genre": "Calendars", "split": 1},
        "1563899744": {"imageURL": "http://ecx.images-amazon.com/images/I/51mJHXz6hoL.jpg",
                       "questions": ["Who wrote this book?"], "answers": ["Alan Watts"], "title": "The Book",
                       "authorName": "Alan Watts", "genre": "Religion", "split": 2},
        "B00004TC6E": {"imageURL": "http://ecx.images-amazon.com/images/I/41ZBQ4TIBHL.png",
                       "questions": ["What is the genre of this book?"], "answers": ["Calendars"],
                       "title": "Cats 2001", "authorName": "Anne Geddes", "genre": "Calendars", "split": 1},
    })


def test_ocrvqa_split_extension_and_grouping(tmp_path, capsys):
    path = ocrvqa_file(tmp_path)
    records = convert(tmp_path, "ocrvqa", "--input", str(path))
    assert [record["id"] for record in records] == ["ocrvqa_761183272_0", "ocrvqa_761183272_1",
                                                    "ocrvqa_761183272_2", "ocrvqa_B00004TC6E_0"]
    assert records[2] == qa("ocrvqa_761183272_2", "761183272.jpg", ("Is this a games related book?", "No"))
    assert records[3]["image"] == "B00004TC6E.png"  # extension of imageURL, as loadDataset.py names files
    assert "1 x split val (converting train)" in capsys.readouterr().out

    grouped = convert(tmp_path, "ocrvqa", "--input", str(path), "--group_by_image",
                      "--image_extension", ".jpg", "--image_prefix", "ocr_vqa/images")
    assert grouped == [
        qa("ocrvqa_761183272_0", "ocr_vqa/images/761183272.jpg", ("Who wrote this book?", "Sandra Boynton"),
           ("What is the title of this book?", "Mom's Family Wall Calendar 2016"),
           ("Is this a games related book?", "No")),
        qa("ocrvqa_B00004TC6E_0", "ocr_vqa/images/B00004TC6E.jpg", ("What is the genre of this book?", "Calendars")),
    ]
    val = convert(tmp_path, "ocrvqa", "--input", str(path), "--split", "val")
    assert val == [qa("ocrvqa_1563899744_0", "1563899744.jpg", ("Who wrote this book?", "Alan Watts"))]


# ---------------------------------------------------------------- AI2D

def ai2d_release(root: Path) -> Path:
    write_json(root / "questions" / "0.png.json", {"imageName": "0.png", "questions": {
        "What is A in the diagram?": {"abcLabel": True, "answerTexts": ["ears", "nose", "mouth", "face"],
                                      "correctAnswer": 3, "questionId": "0.png-0"},
        "Which part is used to smell?": {"abcLabel": False, "answerTexts": ["ears", "nose", "mouth", "face"],
                                         "correctAnswer": 1, "questionId": "0.png-1"}}})
    write_json(root / "questions" / "1.png.json", {"imageName": "1.png", "questions": {
        "What stage comes after the egg?": {"abcLabel": False, "answerTexts": ["adult", "larva", "pupa", "egg"],
                                            "correctAnswer": 1, "questionId": "1.png-0"}}})
    (root / "ai2d_test_ids.csv").write_text("1\n")
    return root


def test_ai2d_letters_text_abc_labels_and_splits(tmp_path, capsys):
    root = ai2d_release(tmp_path / "ai2d")
    options = "\nA. ears\nB. nose\nC. mouth\nD. face"
    everything = convert(tmp_path, "ai2d", "--input", str(root), "--split", "all")
    assert everything == [
        {"id": "ai2d_0.png-1", "image": "0.png", "conversations": [
            {"from": "human", "value": f"<image>\nWhich part is used to smell?{options}\n{LETTER}"},
            {"from": "gpt", "value": "B"}]},
        qa("ai2d_1.png-0", "1.png", ("What stage comes after the egg?\nA. adult\nB. larva\nC. pupa\nD. egg", "B"),
           instruction=LETTER),
    ]
    assert "1 x abcLabel question" in capsys.readouterr().out

    text = convert(tmp_path, "ai2d", "--input", str(root), "--answer_style", "text", "--abc_images", "abc_images",
                   "--split", "all")
    assert text[:2] == [
        qa("ai2d_0.png-0", "abc_images/0.png", (f"What is A in the diagram?{options}", "face")),
        qa("ai2d_0.png-1", "0.png", (f"Which part is used to smell?{options}", "nose")),
    ]
    test_split = convert(tmp_path, "ai2d", "--input", str(root), "--split", "test")
    assert [record["id"] for record in test_split] == ["ai2d_1.png-0"]
    train_split = convert(tmp_path, "ai2d", "--input", str(root / "questions"), "--split", "train",
                          "--test_ids", str(root / "ai2d_test_ids.csv"))
    assert [record["id"] for record in train_split] == ["ai2d_0.png-1"]
    # A split file that names images with their extension, or is empty: before, nothing matched and every test
    # question went into the train split, exit 0.
    (root / "ai2d_test_ids.csv").write_text("1.png\r\n")
    assert [record["id"] for record in convert(tmp_path, "ai2d", "--input", str(root))] == ["ai2d_0.png-1"]
    (root / "ai2d_test_ids.csv").write_text("\n")
    assert main(["ai2d", "--input", str(root), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert f"{root / 'ai2d_test_ids.csv'}: no image ids" in capsys.readouterr().err


def test_ai2d_defaults_to_the_train_split_so_benchmark_questions_stay_out(tmp_path, capsys):
    root = ai2d_release(tmp_path / "ai2d")
    assert convert(tmp_path, "ai2d", "--input", str(root)) == [
        qa("ai2d_0.png-1", "0.png", ("Which part is used to smell?\nA. ears\nB. nose\nC. mouth\nD. face", "B"),
           instruction=LETTER)]
    assert "1 x not in the train split (ai2d_test_ids.csv)" in capsys.readouterr().out
    (root / "ai2d_test_ids.csv").unlink()  # without the split file nothing is guessed
    assert main(["ai2d", "--input", str(root), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "--split train needs ai2d_test_ids.csv" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


# ---------------------------------------------------------------- LLaVA pass-through

def llava_record(record_id: str, image, question: str, answer: str) -> dict:
    record = {"id": record_id, "conversations": [{"from": "human", "value": question},
                                                 {"from": "gpt", "value": answer}]}
    return record if image is None else {**record, "image": image}


def test_llava_pass_through_json_list_and_jsonl(tmp_path, capsys):
    records = [llava_record("000000033471", "coco/train2017/000000033471.jpg",
                            "<image>\nWhat are the colors of the bus in the image?", "White and red."),
               llava_record("i6IyJda_0", None, "Hi, who are you?", "An assistant."),
               llava_record("000000033471", ["a.png", "b.png"], "<image>\n<image>\nSame or not?", "Same.")]
    write_json(tmp_path / "in" / "llava_v1_5_mix665k.json", records)
    (tmp_path / "in" / "extra.jsonl").write_text(json.dumps(records[1] | {"id": "text_2"}) + "\n")
    out = convert(tmp_path, "llava", "--input", str(tmp_path / "in"), "--image_prefix", "llava")
    assert out == [records[1] | {"id": "text_2"},  # extra.jsonl sorts first
                   records[0] | {"image": "llava/coco/train2017/000000033471.jpg"},
                   records[1], records[2] | {"image": ["llava/a.png", "llava/b.png"]}]
    assert "repeated ids (kept): 1" in capsys.readouterr().out


def test_llava_bad_record_names_file_line_and_id(tmp_path, capsys):
    path = tmp_path / "mix.jsonl"
    lines = [llava_record("ok_1", "x.png", "<image>\nQ?", "A."), llava_record("ok_2", "y.png", "<image>\nQ?", "B."),
             llava_record("bad_3", "z.png", "<image>\nQ?", "   "), llava_record("bad_4", "w.png", "Q?", "C.")]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")
    output = tmp_path / "out.jsonl"
    assert main(["llava", "--input", str(path), "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert f"{path}:3 (record 'bad_3')" in error and "empty assistant answer" in error
    assert not output.exists()

    assert main(["llava", "--input", str(path), "--output", str(output), "--on_bad_sample", "skip"]) == 0
    report = capsys.readouterr().out
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["ok_1", "ok_2"]
    assert "skipped: 3" in report and "1 x malformed record" in report
    assert "1 x invalid record: conversations[i]: empty assistant answer" in report
    assert "1 x invalid record: N '<image>' placeholder(s) in field 'conversations'" in report


# ---------------------------------------------------------------- bad input

def test_missing_field_names_file_record_and_field(tmp_path, capsys):
    path = docvqa_file(tmp_path, [docvqa_entry(337, "what is the date?", "xnbl0037_1", ["1/8/93"]),
                                  {k: v for k, v in docvqa_entry(338, "who?", "xnbl0037_1", ["x"]).items()
                                   if k != "answers"}])
    output = tmp_path / "out.jsonl"
    output.write_text("previous contents\n")
    assert main(["docvqa", "--input", str(path), "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert f"{path}: data[1] (questionId 338): missing field 'answers'" in error
    assert output.read_text() == "previous contents\n"  # a failed run leaves the output as it was
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.jsonl")] == []

    assert main(["docvqa", "--input", str(path), "--output", str(output), "--on_bad_sample", "skip"]) == 0
    report = capsys.readouterr().out
    assert "read 2 records" in report and "records written: 1" in report
    assert "1 x missing field 'answers'" in report
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["docvqa_337"]


@pytest.mark.parametrize("source,document,expected", [
    ("ocrvqa", {"1": {"imageURL": "u.jpg", "questions": ["a?", "b?"], "answers": ["x"], "split": 1}},
     "image '1': fields 'questions' and 'answers' must be lists of the same length"),
    ("ai2d", {"imageName": "0.png", "questions": {"Q?": {"abcLabel": False, "answerTexts": ["a", "b"],
                                                         "correctAnswer": 2, "questionId": "0.png-0"}}},
     "questions['Q?'] (questionId '0.png-0'): field 'correctAnswer' must index answerTexts (0..1), got 2"),
    ("textvqa", {"data": [textvqa_entry(7, "abc", "what is written <image> here?", ["x"] * 10)]},
     "data[0] (record 'textvqa_7'): 2 '<image>' placeholder(s)"),
    ("chartqa", [{"imgname": "a.png", "query": "q?", "label": ""}], "[0]: empty field 'label'"),
    # JSON NaN: before, the answer "nan" was written, exit 0
    ("chartqa", [{"imgname": "a.png", "query": "q?", "label": float("nan")}],
     "[0]: field 'label' must be a finite number, got nan"),
    ("ocrvqa", {"1": {"imageURL": "u.jpg", "questions": ["a?"], "answers": [float("inf")], "split": 1}},
     "field 'answers[0]' must be a finite number, got inf"),
    ("dvqa", [{"question_id": 1, "image": "a.png", "question": "q?", "answer": "x"}] * 2,
     "[1] (record 'dvqa_1'): record id 'dvqa_1' was already made from"),
    ("stvqa", {"data": [{"question_id": 1, "question": "q?", "answers": "yes", "file_path": "a/b.jpg"}]},
     "data[0] (question_id 1): field 'answers' must be a list of answers, got str"),
])
def test_bad_records_are_reported(tmp_path, capsys, source, document, expected):
    path = write_json(tmp_path / "source.json", document)
    no_split_file = ["--split", "all"] if source == "ai2d" else []
    assert main([source, "--input", str(path), *no_split_file, "--output", str(tmp_path / "out.jsonl")]) == 1
    error = capsys.readouterr().err
    assert f"{path}" in error and expected in error
    assert not (tmp_path / "out.jsonl").exists()


def test_malformed_or_unexpected_files_are_errors(tmp_path, capsys):
    broken = tmp_path / "train_v1.0_withQT.json"
    broken.write_text('{"data": [\n  {"questionId": 1,}\n]}')
    assert main(["docvqa", "--input", str(broken), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert f"{broken}: malformed JSON at line 2" in capsys.readouterr().err
    listed = write_json(tmp_path / "list.json", [{"questionId": 1}])
    assert main(["docvqa", "--input", str(listed), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "expected a JSON object with a list in field 'data'" in capsys.readouterr().err
    assert main(["textvqa", "--input", str(tmp_path), "--split", "val", "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "no textvqa annotation file matching 'TextVQA_0.5.1_val.json'" in capsys.readouterr().err
    assert main(["ai2d", "--input", str(ai2d_release(tmp_path / "a")), "--split", "train",
                 "--test_ids", str(tmp_path / "none.csv"), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "--split train needs ai2d_test_ids.csv" in capsys.readouterr().err


def test_image_root_limit_and_help(tmp_path, capsys):
    path = docvqa_file(tmp_path, [docvqa_entry(i, f"question {i}?", f"page{i}_1", ["a"]) for i in range(4)])
    (tmp_path / "images" / "documents").mkdir(parents=True)
    for i in (0, 2):
        (tmp_path / "images" / "documents" / f"page{i}_1.png").write_bytes(b"png")
    output = tmp_path / "out.jsonl"
    assert main(["docvqa", "--input", str(path), "--output", str(output), "--image_root", str(tmp_path / "images"),
                 "--on_bad_sample", "skip", "--limit", "3"]) == 0
    report = capsys.readouterr().out
    assert "read 3 records" in report and "1 x image file not found" in report
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ["docvqa_0", "docvqa_2"]
    assert main(["docvqa", "--input", str(path), "--output", str(output),
                 "--image_root", str(tmp_path / "images")]) == 1
    assert f"image file not found: {tmp_path / 'images' / 'documents' / 'page1_1.png'}" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for source in ("ai2d", "chartqa", "docvqa", "dvqa", "infographicvqa", "llava", "ocrvqa", "stvqa",
                   "textcaps", "textvqa"):
        assert f"    {source}" in listed


# ---------------------------------------------------------------- validation splits -> benchmark files

def test_validation_splits_become_benchmark_files_with_every_reference_answer(tmp_path, capsys):
    """DocVQA, InfographicVQA, TextVQA and ChartQA val: one question per record, every annotator's answer,
    read by fila-train eval with the benchmark's own metric."""
    from fila_train.evaluation.bench import read_bench
    from fila_train.evaluation.metrics import get_metric

    docvqa = write_json(tmp_path / "spdocvqa" / "val_v1.0_withQT.json", {
        "dataset_name": "SP-DocVQA", "dataset_split": "val", "dataset_version": "1.0", "data": [
            {**docvqa_entry(49153, "What is the ‘actual’ value per 1000, during the year 1975?", "pybv0228_81",
                            ["0.28", "0.28 "]), "data_split": "val"}]})
    infovqa = write_json(tmp_path / "infographicsVQA_val_v1.0_withQT.json", {
        "dataset_name": "infographicVQA", "dataset_split": "val", "dataset_version": "1.0", "data": [
            {"questionId": 65718, "question": "What percent of users are women?", "image_local_name": "10002.jpeg",
             "answers": ["52%", "52"], "answer_type": ["single span"]}]})
    # The earlier val file beside it (the same questions without their types): before, the folder read both, and
    # every question was "already made from" the other file.
    write_json(tmp_path / "infographicsVQA_val_v1.0.json", json.loads(infovqa.read_text()))
    textvqa = write_json(tmp_path / "TextVQA_0.5.1_val.json", {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [
            textvqa_entry(34602, "003a8ae2ef43b901", "what is the brand of this camera?",
                          ["nous les gosses"] + ["dakota"] * 8 + [""], set_name="val")]})
    write_json(tmp_path / "ChartQA Dataset" / "val" / "val_human.json", [
        {"imgname": "3345.png", "query": "What's the value of the lowest bar?", "label": "23"}])
    write_json(tmp_path / "ChartQA Dataset" / "val" / "val_augmented.json", [
        {"imgname": "1200.png", "query": "How many bars are there?", "label": 4}])
    cases = {
        "docvqa": ([str(docvqa.parent)], "anls", [
            {"id": "docvqa_49153", "image": "documents/pybv0228_81.png",
             "question": "What is the ‘actual’ value per 1000, during the year 1975?", "answers": ["0.28", "0.28"]}]),
        "infographicvqa": ([str(infovqa.parent)], "anls", [
            {"id": "infographicvqa_65718", "image": "10002.jpeg", "question": "What percent of users are women?",
             "answers": ["52%", "52"]}]),
        "textvqa": ([str(textvqa)], "vqa", [
            {"id": "textvqa_34602", "image": "train_images/003a8ae2ef43b901.jpg",
             # An annotator's empty answer stays: the VQA metric scores against all 10 (before: 9, refused by eval).
             "question": "what is the brand of this camera?", "answers": ["nous les gosses"] + ["dakota"] * 8 + [""]}]),
        "chartqa": ([str(tmp_path / "ChartQA Dataset")], "relaxed", [
            {"id": "chartqa_val_human_0", "image": "png/3345.png", "question": "What's the value of the lowest bar?",
             "answers": ["23"]},
            {"id": "chartqa_val_augmented_0", "image": "png/1200.png", "question": "How many bars are there?",
             "answers": ["4"]}]),
    }
    for source, (inputs, metric, expected) in cases.items():
        output = tmp_path / "bench" / f"{source}_val.jsonl"
        assert main([source, "--input", *inputs, "--split", "val", "--output", str(output)]) == 0
        assert "benchmark questions written" in capsys.readouterr().out
        assert [json.loads(line) for line in output.read_text().splitlines()] == expected
        # No images on disk here: eval reads the same records without their image field.
        stripped = tmp_path / "bench" / f"{source}_noimage.jsonl"
        stripped.write_text("".join(json.dumps({k: v for k, v in record.items() if k != "image"}) + "\n"
                                    for record in expected))
        assert [q.answers for q in read_bench(stripped, get_metric(metric), None)] == \
            [record["answers"] for record in expected]


@pytest.mark.parametrize("make, flags, says", [
    (lambda folder: docvqa_release(folder), ["--split", "val"],
     "this is the 'train' split (field 'dataset_split'), but --split is 'val': pass the val file, or --split train"),
    (lambda folder: write_json(folder / "val_v1.0_withQT.json", {"dataset_split": "val", "data": []}), [],
     "this is the 'val' split (field 'dataset_split'), but --split is 'train'"),
    (lambda folder: textvqa_file(folder), ["--split", "val"], "this is the 'train' split (field 'dataset_type')"),
    (lambda folder: chartqa_release(folder) / "train_human.json", ["--split", "val", "--subset", "human"],
     "this is the 'train' split (its file name), but --split is 'val'"),
    (lambda folder: write_json(folder / "val_v1.0_withQT.json", {"dataset_split": "val", "data": []}),
     ["--split", "val", "--group_by_image"], "--group_by_image does not apply to --split val"),
    # A test split has no answers: before, "data[0]: missing field 'answers'" (with skip: an empty file, exit 0).
    (lambda folder: write_json(folder / "test_v1.0.json", {"dataset_split": "test", "data": [
        {"questionId": 1, "question": "q?", "image": "documents/a.png"}]}), ["--on_bad_sample", "skip"],
     "this is the 'test' split (field 'dataset_split'), which has no answers to convert"),
])
def test_a_split_that_contradicts_the_files_own_contents_is_an_error(tmp_path, capsys, make, flags, says):
    path = make(tmp_path / "release")
    source = {"val_v1.0_withQT.json": "docvqa", "train_v1.0_withQT.json": "docvqa", "test_v1.0.json": "docvqa",
              "TextVQA_0.5.1_train.json": "textvqa", "train_human.json": "chartqa"}[path.name]
    output = tmp_path / "out.jsonl"
    assert main([source, "--input", str(path), *flags, "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert says in err and not output.exists()


def test_file_system_errors_are_one_line(tmp_path, capsys):
    """Before, an --output that is a folder was a traceback ending in IsADirectoryError, after the conversion."""
    folder = tmp_path / "llava"
    folder.mkdir()
    (folder / "mix.jsonl").write_text(json.dumps(llava_record("a", "x.png", "<image>\nQ?", "A.")) + "\n")
    (tmp_path / "a_folder").mkdir()
    assert main(["llava", "--input", str(folder), "--output", str(tmp_path / "a_folder")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("fila-train data convert llava: error: ") and "Traceback" not in error, error
    assert len(error.splitlines()) == 2 and "nothing was written to" in error


@pytest.mark.parametrize("flags, says", [
    (["--image_prefix", "/abs"], "argument --image_prefix: absolute image path '/abs' is not allowed"),
    (["--image_prefix", "../up"], "argument --image_prefix: image path '../up' escapes the image folder"),
    (["--image_root", "no_such_folder"], "argument --image_root: no_such_folder: no such folder"),
])
def test_a_bad_image_flag_is_one_flag_error_before_any_record(tmp_path, capsys, flags, says):
    """Before, each record was refused for it ("4 x invalid record"), and under skip an empty file was written,
    exit 0."""
    from fila_train.cli import main as fila_train_main

    path = docvqa_release(tmp_path / "spdocvqa")
    assert fila_train_main(["data", "convert", "docvqa", "--input", str(path), "--output", str(tmp_path / "o.jsonl"),
                            "--on_bad_sample", "skip", *flags]) == 1
    error = capsys.readouterr().err
    assert says in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "o.jsonl").exists()


def test_an_integer_answer_past_floats_range_is_written_as_its_digits(tmp_path):
    """The finite-number check (NaN / Infinity answers) converted every number answer to a float first: an integer
    answer past the float range (JSON holds any integer, Python's json reads it) was an OverflowError's traceback
    where before it was written as its digits."""
    data = tmp_path / "train_human.json"
    write_json(data, [{"imgname": "a.png", "query": "How many?", "label": 10 ** 400}])
    assert [record["conversations"][1]["value"] for record in convert(tmp_path, "chartqa", "--input", str(data))] \
        == [str(10 ** 400)]
