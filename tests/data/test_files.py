"""User task files (JSONL / JSON / CSV) and hf: datasets."""

import json

import pytest

from slimtune.data import load_task
from slimtune.data.files import row_example
from slimtune.errors import DataError


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def mc_rows(n):
    return [{"question": f"What is {i} + 1?", "choices": [str(i + 1), str(i + 2)], "label": i % 2} for i in range(n)]


def test_jsonl_multiple_choice_labels_and_format(tmp_path):
    f = write_jsonl(tmp_path / "mc.jsonl", [
        {"prompt": "Sky colour:", "choices": ["green", "blue"], "label": 1},
        {"prompt": "Grass colour: ", "choices": ["green", "blue"], "label": "green"},  # label by text
        {"question": "Is ice cold?", "choices": ["yes", "no"], "label": 0},
    ])
    task = load_task(str(f), fractions=(1.0, 0.0))
    assert task.kind == "multiple_choice" and task.sizes() == {"train": 3, "validation": 0, "test": 0}
    by_prompt = {e.prompt: e for e in task.train}
    sky = by_prompt["Sky colour:"]
    assert sky.choices == (" green", " blue") and sky.completion == " blue"
    grass = by_prompt["Grass colour:"]  # trailing space moved onto the choices
    assert grass.label == 0 and grass.choices == (" green", " blue")
    ice = by_prompt["Question: Is ice cold?\nAnswer:"]
    assert ice.completion == " yes"


def test_lettered_variant(tmp_path):
    f = write_jsonl(tmp_path / "mc.jsonl", [{"question": "Pick b", "choices": ["a", "b", "c"], "label": 1}])
    (ex,) = load_task(str(f), lettered=True, fractions=(1.0, 0.0)).train
    assert ex.prompt == "Question: Pick b\nA. a\nB. b\nC. c\nAnswer:"
    assert ex.choices == (" A", " B", " C") and ex.completion == " B"


def test_generation_rows_and_exact_match(tmp_path):
    f = write_jsonl(tmp_path / "gen.jsonl", [
        {"prompt": "2+2=", "answer": "4"},
        {"question": "Capital of France?", "answer": "It is Paris.", "target": "Paris"},
    ])
    task = load_task(str(f), fractions=(1.0, 0.0))
    assert task.kind == "generation"
    ex = {e.target: e for e in task.train}
    assert ex["4"].prompt == "2+2=" and ex["4"].answer == " 4"
    paris = ex["Paris"]
    assert paris.answer == " It is Paris." and paris.prompt == "Question: Capital of France?\nAnswer:"
    assert task.score(" paris.\nmore text", paris) == 1.0
    assert task.score("  PARIS ", paris) == 1.0
    assert task.score("London", paris) == 0.0
    assert task.score("3.5", ex["4"]) == 0.0


def test_split_is_deterministic_disjoint_and_seeded(tmp_path):
    f = write_jsonl(tmp_path / "mc.jsonl", mc_rows(40))
    a, b, c = load_task(str(f), seed=1), load_task(str(f), seed=1), load_task(str(f), seed=2)
    assert a.sizes() == {"train": 24, "validation": 6, "test": 10}
    assert [e.prompt for e in a.test] == [e.prompt for e in b.test]
    assert [e.prompt for e in a.test] != [e.prompt for e in c.test]
    parts = [{e.prompt for e in a.split(s)} for s in ("train", "validation", "test")]
    assert sum(map(len, parts)) == 40 and len(set.union(*parts)) == 40


def test_split_column_pins_rows(tmp_path):
    rows = mc_rows(10)
    rows[0]["split"] = "test"
    rows[1]["split"] = "dev"
    task = load_task(str(write_jsonl(tmp_path / "mc.jsonl", rows)))
    assert rows[0]["question"] in {e.prompt.split("\n")[0][len("Question: "):] for e in task.test}
    assert any("What is 1 + 1?" in e.prompt for e in task.validation)


def test_csv_with_numbered_and_json_choices(tmp_path):
    f = tmp_path / "mc.csv"
    f.write_text(
        "text,choice_0,choice_1,choice_2,label,split\n"
        "great film,negative,positive,,positive,train\n"
        "awful film,negative,positive,,0,test\n"
        "\"three, options\",a,b,c,2,train\n"
    )
    task = load_task(str(f))
    assert task.sizes() == {"train": 2, "validation": 0, "test": 1}
    (awful,) = task.test
    assert awful.prompt == "Text: awful film\nLabel:"
    assert awful.choices == (" negative", " positive") and awful.label == 0
    three = next(e for e in task.train if "three" in e.prompt)
    assert three.choices == (" a", " b", " c") and three.label == 2
    g = tmp_path / "j.csv"
    g.write_text('prompt,choices,label\nQ?,"[""x"", ""y""]",y\n')
    (ex,) = load_task(str(g), fractions=(1.0, 0.0)).train
    assert ex.choices == (" x", " y") and ex.label == 1


def test_json_list_file(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(mc_rows(5)))
    assert sum(load_task(str(f)).sizes().values()) == 5


@pytest.mark.parametrize("rows, message", [
    ([mc_rows(1)[0], {"prompt": "x", "choices": ["a", "b"], "label": 3}],
     "mc.jsonl:2: field 'label': 3 is out of range for 2 choices"),
    ([{"prompt": "x", "choices": ["a", "b"], "label": "c"}],
     "mc.jsonl:1: field 'label': 'c' is neither a choice"),
    ([{"prompt": "x", "choices": ["a", "b"]}], "mc.jsonl:1: field 'label': missing"),
    ([{"prompt": "x", "choices": ["a"], "label": 0}], "mc.jsonl:1: field 'choices': needs at least 2"),
    ([{"prompt": "x", "choices": "a,b", "label": 0}], "mc.jsonl:1: field 'choices'"),
    ([{"answer": "x"}], "mc.jsonl:1: field 'prompt': missing"),
    ([{"prompt": "x"}], "mc.jsonl:1: field 'answer': missing"),
    ([{"prompt": "x", "answer": "y", "split": "holdout"}], "mc.jsonl:1: field 'split': 'holdout'"),
    ([{"prompt": "x", "answer": "y"}, "", mc_rows(1)[0]], "mc.jsonl:3: field 'answer': this row is multiple choice"),
    ([mc_rows(1)[0], '{"prompt": "x", "choices": [', mc_rows(1)[0]], "mc.jsonl:2: invalid JSON"),
    (["[1, 2]"], "mc.jsonl:1: expected an object"),
])
def test_errors_name_file_line_and_field(tmp_path, rows, message):
    f = write_jsonl(tmp_path / "mc.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_task(str(f))
    assert str(f.parent) in str(err.value) and message in str(err.value)


def test_csv_error_names_line(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("prompt,choice_0,choice_1,label\nok,a,b,1\nbad,a,b,7\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: field 'label': 7 is out of range for 2 choices"):
        load_task(str(f))
    g = tmp_path / "nohead.csv"
    g.write_text("q,a\nx,y\n")
    with pytest.raises(DataError, match=r"nohead\.csv:1: field 'prompt'"):
        load_task(str(g))


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        load_task(str(tmp_path / "empty.jsonl"))
    (tmp_path / "header.csv").write_text("prompt,answer\n")
    with pytest.raises(DataError, match="header.csv: no rows"):
        load_task(str(tmp_path / "header.csv"))
    with pytest.raises(DataError, match="does not exist"):
        load_task(str(tmp_path / "nope.jsonl"))


def test_label_text_wins_over_index():
    ex, _ = row_example({"prompt": "p", "choices": ["1", "0"], "label": "0"}, "x:1")
    assert ex.label == 1  # "0" is the text of choice 1
    ex, _ = row_example({"prompt": "p", "choices": ["a", "b"], "label": "1"}, "x:1")
    assert ex.label == 1


# ---- hf:

datasets = pytest.importorskip("datasets")


def test_hf_save_to_disk_with_classlabel_and_splits(tmp_path):
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    train = datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(20)], "label": [i % 2 for i in range(20)]},
                                       features=features)
    test = datasets.Dataset.from_dict({"sentence": ["t0", "t1", "u"], "label": [1, 0, -1]}, features=features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "ds"))
    task = load_task(f"hf:{tmp_path / 'ds'}", prompt_column="sentence")
    assert task.kind == "multiple_choice"
    assert len(task.test) == 2  # the unlabelled (-1) row is dropped
    assert len(task.validation) == 4 and len(task.train) == 16  # 0.15 / 0.75 of train carved off
    t0 = next(e for e in task.test if "t0" in e.prompt)
    assert t0.prompt == "Question: t0\nAnswer:" and t0.choices == (" negative", " positive") and t0.label == 1


def test_hf_local_json_generation(tmp_path):
    f = write_jsonl(tmp_path / "gen.jsonl", [{"q": f"{i}+{i}=", "a": str(2 * i)} for i in range(10)])
    task = load_task(f"hf:{f}", prompt_column="q", answer_column="a", seed=3)
    assert task.kind == "generation" and sum(task.sizes().values()) == 10
    ex = task.train[0]
    assert task.score(ex.target, ex) == 1.0


def test_hf_errors(tmp_path):
    f = write_jsonl(tmp_path / "gen.jsonl", [{"q": "x", "a": "y"}])
    with pytest.raises(DataError, match="no prompt column None; columns are q, a"):
        load_task(f"hf:{f}")
    with pytest.raises(DataError, match="row 0: field 'answer': missing"):
        load_task(f"hf:{f}", prompt_column="q")
    with pytest.raises(DataError, match="unknown option"):
        load_task(f"hf:{f}", prompt_col="q")
