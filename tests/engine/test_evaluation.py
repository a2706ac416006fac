"""`minimind-spec eval` against independent references: perplexity, bits per byte, acc and acc_norm
recomputed through transformers on the exported model (the sliding-window rule reimplemented
per target here), greedy exact match against `model.generate` one prompt at a time, lm-eval's
own `simple_evaluate` on the same files where `lm_eval` is installed, and bad input as one
`file:line:` line with exit code 2."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.engine.evaluation import answer_text, text_rows, windows

from .conftest import WORDS, _has, lm_eval_choice_task

transformers = pytest.importorskip("transformers")

WINDOW = 64  # the workspace spec's seq_len: max_position_embeddings
TEXTS = ["the cat sat on a mat", "two plus three is five  and the dog ran", "naïve café: le chat noir 猫",
         " ".join(WORDS[i % len(WORDS)] for i in range(0, 500, 3))]  # the last is several windows long
CHOICES = [  # a short choice wins on summed log-likelihood, the long one per character: acc and acc_norm disagree
    {"question": "the cat sat on", "choices": ["x", "a mat the dog ran to a big red ball"], "answer": 1},
    {"question": "two plus three is ", "choices": ["five", "six", "four"], "answer": 0},  # trailing space moves
    {"question": "", "choices": ["the dog", "red ball", "café"], "answer": 2},
    {"question": "what is four plus six", "choices": ["ten", "the cat sat on a mat and the dog ran"], "answer": 1},
]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def models(workspace, tmp_path_factory):
    """A tiny model with its tokenizer beside it (random weights, seed 3), and its Hugging Face export."""
    root = tmp_path_factory.mktemp("eval")
    built = invoke("build", workspace / "tiny.json", "--out", root / "model", "--seed", "3")
    assert built.exit_code == 0, built.output
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(workspace / "tok" / name, root / "model" / name)
    exported = invoke("export", root / "model", "--out", root / "hf")
    assert exported.exit_code == 0, exported.output
    return root / "model", root / "hf"


@pytest.fixture(scope="module")
def hf(models):
    model = transformers.AutoModelForCausalLM.from_pretrained(models[1], dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(models[1])
    assert model.config.max_position_embeddings == WINDOW
    return model, tokenizer


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def run_eval(model_dir, data, *extra):
    result = invoke("eval", model_dir, "--data", data, "--json", "--no-progress", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@torch.no_grad()
def logprob(model, context: list[int], target: int) -> float:
    logits = model(torch.tensor([context])).logits[0, -1].double()  # (V,)
    return float(logits.log_softmax(-1)[target])


def context_start(j: int, length: int, window: int, stride: int) -> int:
    """Where target j's context starts: the first window predicts positions 1..window, each next one `stride` more,
    its inputs the `window` tokens before its last target."""
    if j <= window:
        return 0
    last = min(window + math.ceil((j - window) / stride) * stride, length - 1)
    return last - window


def hf_text_nll(model, tokenizer, text: str, window: int, stride: int) -> tuple[float, int]:
    """The NLL of a text's tokens after a BOS, each target j scored on seq[context_start(j):j] (one forward per start)."""
    seq = [tokenizer.convert_tokens_to_ids("<|im_start|>"), *tokenizer.encode(text, add_special_tokens=False)]
    by_start: dict[int, list[int]] = {}
    for j in range(1, len(seq)):
        by_start.setdefault(context_start(j, len(seq), window, stride), []).append(j)
    nll = 0.0
    for start, targets in by_start.items():
        assert targets[-1] - start <= window
        with torch.no_grad():
            logprobs = model(torch.tensor([seq[start:targets[-1]]])).logits[0].double().log_softmax(-1)  # (T, V)
        nll -= sum(float(logprobs[j - 1 - start, seq[j]]) for j in targets)
    return nll, len(seq) - 1


def test_windows_score_each_target_once_with_the_most_context():
    for length, window, stride in [(2, 4, 2), (10, 4, 2), (11, 4, 4), (30, 8, 3), (9, 8, 1)]:
        seen = []
        for start, end, scored in windows(length, window, stride):
            assert end - start <= window and 1 <= scored <= (window if not seen else stride)
            targets = list(range(end - scored + 1, end + 1))
            assert all(start == context_start(j, length, window, stride) for j in targets)
            seen += targets
        assert seen == list(range(1, length))
    rows = text_rows([5, 6, 7, 8, 9], bos=1, window=3, stride=2)  # lm-eval's disjoint windows at stride = window
    assert [(r.inputs, r.targets) for r in rows] == [((1, 5, 6), (5, 6, 7)), ((6, 7, 8), (8, 9))]


@pytest.mark.parametrize("stride", [None, 20, WINDOW])
def test_perplexity_equals_transformers_with_the_same_windows(models, hf, tmp_path, stride):
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])
    extra = ["--batch-size", "3"] + (["--stride", str(stride)] if stride else [])
    report = run_eval(models[0], data, *extra)
    step = stride or WINDOW // 2
    pieces = [hf_text_nll(*hf, text, WINDOW, step) for text in TEXTS]
    assert pieces[-1][1] > 2 * WINDOW  # the long text needs several windows
    nll, tokens = sum(p[0] for p in pieces), sum(p[1] for p in pieces)
    size = sum(len(t.encode("utf-8")) for t in TEXTS)
    words = sum(len(re.split(r"\s+", t)) for t in TEXTS)
    metrics = report["metrics"]
    assert report["kind"] == "text" and report["n"] == len(TEXTS)
    assert report["totals"]["tokens"] == tokens and report["totals"]["bytes"] == size
    assert report["totals"]["stride"] == step
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    assert metrics["bits_per_byte"] == pytest.approx(nll / (math.log(2) * size), rel=1e-4)
    assert metrics["byte_perplexity"] == pytest.approx(2 ** metrics["bits_per_byte"], rel=1e-9)
    assert metrics["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-4)
    for record, (piece_nll, piece_tokens) in zip(report["records"], pieces):
        assert record["tokens"] == piece_tokens
        assert -record["loglikelihood"] == pytest.approx(piece_nll, rel=1e-4)


def hf_choice_logliks(model, tokenizer, question: str, choices: list[str]) -> list[float]:
    """lm-eval's split: trailing spaces of the context move to the continuation; encode the whole, cut at the context."""
    context, delimiter = question.rstrip(), question[len(question.rstrip()):] + " "
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    logliks = []
    for choice in choices:
        whole = tokenizer.encode(context + delimiter + choice, add_special_tokens=False)
        sequence = [tokenizer.convert_tokens_to_ids("<|im_start|>"), *whole]
        first = 1 + len(context_ids)
        logliks.append(sum(logprob(model, sequence[:j], sequence[j]) for j in range(first, len(sequence))))
    return logliks


def test_acc_and_acc_norm_equal_transformers(models, hf, tmp_path):
    data = write_jsonl(tmp_path / "choices.jsonl", CHOICES)
    report = run_eval(models[0], data, "--batch-size", "3")
    preds, preds_norm = [], []
    for record, row in zip(report["records"], CHOICES):
        expected = hf_choice_logliks(*hf, row["question"], row["choices"])
        assert record["loglikelihoods"] == pytest.approx(expected, rel=1e-4)
        preds.append(max(range(len(expected)), key=expected.__getitem__))
        preds_norm.append(max(range(len(expected)), key=lambda i: expected[i] / len(row["choices"][i])))
        assert (record["pred"], record["pred_norm"]) == (preds[-1], preds_norm[-1])
    assert preds[0] == 0 and preds_norm[0] == 1  # the long choice loses on the sum, wins per character
    acc = sum(p == row["answer"] for p, row in zip(preds, CHOICES)) / len(CHOICES)
    acc_norm = sum(p == row["answer"] for p, row in zip(preds_norm, CHOICES)) / len(CHOICES)
    assert acc != acc_norm
    assert report["metrics"] == {"acc": acc, "acc_norm": acc_norm}


def test_exact_match_is_the_share_of_greedy_answers_equal_to_the_reference(trained, tmp_path):
    from minimind_spec.engine.chat import prompt_ids
    from minimind_spec.engine.data.tokenizer import load_tokenizer
    from minimind_spec.engine.export import from_pretrained
    from minimind_spec.model_files import find_model

    model, tokenizer = from_pretrained(trained).eval(), load_tokenizer(find_model(trained).tokenizer_dir)
    questions = ["what is 2 plus 3", "what is 4 plus 1 and then", "the cat", "what is 0 plus 0"]
    greedy = []
    for question in questions:  # one prompt at a time, no padding: the reference for our batched, left-padded run
        ids = prompt_ids(tokenizer, question, chat=True)
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, eos_token_id=tokenizer.eos_id,
                             pad_token_id=tokenizer.pad_id)[0, len(ids):].tolist()
        out = out[:out.index(tokenizer.eos_id)] if tokenizer.eos_id in out else out
        greedy.append(tokenizer.decode([t for t in out if t != tokenizer.pad_id]))
    assert all(g.strip() for g in greedy)
    # 0 matches, 2 too (stripped; the reference's reasoning is not compared), 1 and 3 do not
    references = [greedy[0], "not what it says", f"<think>\nsome reasoning\n</think>\n\n  {greedy[2]}\n", "no"]
    rows = [{"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": r}]}
            for q, r in zip(questions, references)]
    report = run_eval(trained, write_jsonl(tmp_path / "chat.jsonl", rows), "--max-new-tokens", "12", "--batch-size", "4")
    assert [r["output"] for r in report["records"]] == greedy
    assert [r["match"] for r in report["records"]] == [True, False, True, False]
    assert report["metrics"] == {"exact_match": 0.5}


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(models):
    """On weights drawn wide enough that greedy text varies, with prompts of different lengths and limits in one batch."""
    from minimind_spec.engine.data.tokenizer import load_tokenizer
    from minimind_spec.engine.evaluation import greedy
    from minimind_spec.engine.export import load_model_files

    model, tokenizer = load_model_files(models[0]).eval(), load_tokenizer(models[0])
    model.reset_parameters(std=0.5, generator=torch.Generator().manual_seed(0))
    prompts = [tokenizer.encode(text) for text in ("the cat sat on a mat", "two", "big red ball and the dog ran to")]
    limits = [9, 4, 12]
    alone = []
    for prompt, limit in zip(prompts, limits):
        out = model.generate(torch.tensor([prompt]), max_new_tokens=limit, eos_token_id=tokenizer.eos_id,
                             pad_token_id=tokenizer.pad_id)[0, len(prompt):].tolist()
        alone.append([t for t in (out[:out.index(tokenizer.eos_id)] if tokenizer.eos_id in out else out)
                      if t != tokenizer.pad_id])
    assert len({tuple(a) for a in alone}) == 3 and [len(a) for a in alone] == limits  # varied, none stopped early
    assert greedy(model, tokenizer, prompts, limits, "cpu") == alone


def test_the_answer_is_what_follows_the_reasoning():
    assert answer_text("<think>\n2 and 3 make 5\n</think>\n\n 2 plus 3 is 5 ") == "2 plus 3 is 5"
    assert answer_text("a</think>b</think> c\n") == "c"
    assert answer_text(" no reasoning ") == "no reasoning"


def test_the_table_names_each_metric(models, tmp_path):
    data = write_jsonl(tmp_path / "choices.jsonl", CHOICES)
    result = invoke("eval", models[0], "--data", data)
    assert result.exit_code == 0, result.output
    assert "acc_norm" in result.stdout and "choice records" in result.stdout
    assert result.stderr == ""  # no progress bar where stderr is not a terminal


BAD = {
    "not-json": ('{"text": "a"}\n{"text": oops}\n', ":2: not JSON"),
    "unknown-shape": ('{"prompt": "a", "completion": "b"}\n', ":1: unknown record shape (keys: completion, prompt)"),
    "mixed-kinds": ('{"text": "a"}\n\n{"question": "q", "choices": ["a", "b"], "answer": 0}\n',
                    ":3: a choice record in a file of text records"),
    "answer-out-of-range": ('{"question": "q", "choices": ["a", "b"], "answer": 2}\n', ':1: "answer" must be the index'),
    "no-reference": ('{"conversations": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}]}\n',
                     ":1: the last turn is a user turn"),
    "empty": ("", ": no records (the file is empty)"),
    "not-utf8": (b'{"text": "caf\xe9"}\n', ":1: not UTF-8 (byte 0xe9 at column 14)"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_one_line_naming_file_and_line(models, tmp_path, case):
    content, message = BAD[case]
    data = tmp_path / "bad.jsonl"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = invoke("eval", models[0], "--data", data)
    assert result.exit_code == 2, result.output
    assert f"{data}{message}" in result.output.replace("\n", "")
    assert "Traceback" not in result.output


def test_missing_model_data_and_bad_windows_exit_2(models, tmp_path):
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": "the cat"}])
    for args, message in [((tmp_path / "nowhere", "--data", data), "no such file or directory"),
                          ((models[0], "--data", tmp_path / "missing.jsonl"), "missing.jsonl: file not found"),
                          ((models[0], "--data", data, "--max-length", "65"), "the window must be 2 to 64"),
                          ((models[0], "--data", data, "--max-length", "16", "--stride", "17"), "it must be 1 to 16")]:
        result = invoke("eval", *args)
        assert result.exit_code == 2, result.output
        assert message in result.output.replace("\n", "") and "Traceback" not in result.output


LM_EVAL_TEXT = """task: mm_text
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


@pytest.mark.skipif(not _has("lm_eval"), reason="lm_eval is not installed (pip install 'minimind-spec[eval]')")
def test_lm_eval_agrees(models, tmp_path, monkeypatch):
    """lm-eval's HFLM on the exported model, with local task YAMLs, offline. Its contexts get no BOS unless the
    text holds one, so the choice task writes `<|im_start|>` before the question; its rolling windows are
    disjoint, which is our --stride equal to the window."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import get_rolling_token_windows

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    choices = write_jsonl(tmp_path / "choices.jsonl", CHOICES)
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])
    (tasks / "mm_choice.yaml").write_text(lm_eval_choice_task("mm_choice", choices))
    (tasks / "mm_text.yaml").write_text(LM_EVAL_TEXT.format(data=texts))
    lm = HFLM(pretrained=str(models[1]), max_length=WINDOW, batch_size=2, device="cpu", dtype="float32")
    evaluated = simple_evaluate(model=lm, tasks=["mm_choice", "mm_text"], task_manager=TaskManager(include_path=str(tasks)),
                              bootstrap_iters=0, log_samples=True)
    samples = {task: sorted(evaluated["samples"][task], key=lambda sample: sample["doc_id"]) for task in evaluated["samples"]}
    results = evaluated["results"]
    ours = run_eval(models[0], choices)
    for record, sample in zip(ours["records"], samples["mm_choice"], strict=True):
        assert record["loglikelihoods"] == pytest.approx([ll for ll, _ in sample["filtered_resps"]], rel=1e-4)
    assert ours["metrics"]["acc"] == pytest.approx(results["mm_choice"]["acc,none"])
    assert ours["metrics"]["acc_norm"] == pytest.approx(results["mm_choice"]["acc_norm,none"])
    assert ours["metrics"]["acc"] != ours["metrics"]["acc_norm"]
    ours = run_eval(models[0], texts, "--stride", str(WINDOW))
    for record, sample in zip(ours["records"], samples["mm_text"], strict=True):
        assert record["loglikelihood"] == pytest.approx(sample["filtered_resps"][0], rel=1e-4)
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours["metrics"][metric] == pytest.approx(results["mm_text"][f"{metric},none"], rel=1e-4)
    tokens = list(range(2, 200))
    for stride in (1, 5, 32, WINDOW):  # our windows are lm-eval's rolling windows with context_len = window - stride + 1
        theirs = get_rolling_token_windows(token_list=tokens, prefix_token=1, max_seq_len=WINDOW,
                                           context_len=WINDOW - stride + 1)
        assert [(list(r.inputs), list(r.targets)) for r in text_rows(tokens, 1, WINDOW, stride)] == list(theirs)
