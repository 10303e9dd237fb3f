"""The checks of a request's payload (lifecycle.edge.requests), without a server: the same messages the
service answers with 422 (tests/test_hardening_server.py sends them over HTTP)."""

import base64

import pytest

from lifecycle.edge import TablePreprocessing
from lifecycle.edge.requests import GENERATE_OPTIONS, check_prompts, check_rows, check_texts, image_items

TABLE = TablePreprocessing({"numeric": [{"name": "bill_mm", "mean": 40.0, "std": 5.0, "min": 30.0, "max": 60.0}],
                            "categorical": []})


@pytest.mark.parametrize("payload, problem", [
    ({"texts": ["a", "b"]}, None),
    ({"text": ["a"]}, 'expected a JSON object with exactly one key, "texts": a list of strings'),
    ({"texts": ["a"], "extra": 1}, 'expected a JSON object with exactly one key, "texts": a list of strings'),
    (["a"], 'expected a JSON object with exactly one key, "texts": a list of strings'),
    ({"texts": []}, '"texts" must be a non-empty list of strings'),
    ({"texts": "a"}, '"texts" must be a non-empty list of strings'),
    ({"texts": ["a"] * 4}, '"texts" has 4 items; the limit is 3 per request'),
    ({"texts": ["a", 7]}, '"texts"[1] is a int, not a string'),
])
def test_texts(payload, problem):
    assert check_texts(payload, 3) == problem


def test_rows_are_checked_with_the_models_transform_and_counted():
    problem, counts = check_rows({"rows": [{"bill_mm": 42.0, "extra": 1}, {"bill_mm": None}]}, 3, TABLE)
    assert problem is None
    assert (counts["extra_columns"], counts["missing"]) == ({"extra": 1}, {"bill_mm": 1})
    assert check_rows({"rows": [{}]}, 3, TABLE) == (
        "\"rows\": column 'bill_mm': missing from row 0 (a required column; send null for a missing value)", {})
    assert check_rows({"rows": [1]}, 3, TABLE)[0] == "\"rows\": column '*': row 0 is not a mapping of column -> value"
    assert check_rows({"texts": ["a"]}, 3, TABLE) == (
        'expected a JSON object with exactly one key, "rows": a list of objects (column -> value)', {})
    assert check_rows({"rows": [{}] * 4}, 3, TABLE) == ('"rows" has 4 items; the limit is 3 per request', {})


@pytest.mark.parametrize("payload, problem", [
    ({"prompts": ["hi"]}, None),
    ({"prompts": ["hi"], "max_new_tokens": 5, "temperature": 0.7, "top_k": 0, "top_p": 1, "seed": None,
      "stop": ["\n"], "time_budget_s": 0.5, "stream": True}, None),
    ({"prompts": []}, '"prompts" must be a non-empty list of strings'),
    ({"prompts": ["a"] * 4}, '"prompts" has 4 items; the limit is 3 per request'),
    ({"prompts": [None]}, '"prompts"[0] is a NoneType, not a string'),
    ({"prompts": ["hi"], "max_new_tokens": 0}, '"max_new_tokens" must be an integer >= 1'),
    ({"prompts": ["hi"], "max_new_tokens": True}, '"max_new_tokens" must be an integer >= 1'),
    ({"prompts": ["hi"], "temperature": float("nan")}, '"temperature" must be a number from 0 (greedy) to 10'),
    ({"prompts": ["hi"], "top_p": 0}, '"top_p" must be a number in (0, 1]'),
    ({"prompts": ["hi"], "seed": 2**63}, '"seed" must be null or an integer >= 0'),
    ({"prompts": ["hi"], "stop": [""]},
     '"stop" must be a list of at most 8 non-empty strings of at most 64 characters'),
    ({"prompts": ["hi"], "stream": "yes"}, '"stream" must be true or false'),
])
def test_prompts_and_generate_options(payload, problem):
    assert check_prompts(payload, 3) == problem


@pytest.mark.parametrize("payload", [{"texts": ["hi"]}, {"prompts": ["hi"], "beam": 4}, ["hi"]])
def test_a_generate_request_of_another_shape_names_every_option(payload):
    problem = check_prompts(payload, 3)
    assert problem.startswith('expected a JSON object with "prompts" (a list of strings) and optionally ')
    assert all(f'"{k}"' in problem for k in GENERATE_OPTIONS)


def test_images_are_a_list_of_base64_strings_decoded_here():
    png = b"\x89PNG\r\n\x1a\n...."
    assert image_items({"images": [base64.b64encode(png).decode()]}, 3) == (None, [png])
    assert image_items({"images": []}, 3) == ('"images" must be a non-empty list of base64 strings', [])
    assert image_items({"images": ["aGk="] * 4}, 3) == ('"images" has 4 items; the limit is 3 per request', [])
    assert image_items({"images": ["aGk=", 5]}, 3) == ('"images"[1] is a int, not a base64 string', [])
    assert image_items({"images": ["aGk=", "not base64!"]}, 3) == ('"images"[1] is not valid base64', [])
    problem, _ = image_items({"image": "aGk="}, 3)
    assert problem.startswith('expected a JSON object with exactly one key, "images": a list of base64 PNG/JPEG')
