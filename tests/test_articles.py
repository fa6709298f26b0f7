"""The article-level view: whole articles as contexts, every answer still at its (shifted) offset."""

from __future__ import annotations

import json
from pathlib import Path

from nami.cli import main
from nami.data.articles import article_view, to_squad
from nami.data.squad import Answer, QAExample, load_squad

FIXTURES = Path(__file__).parent / "fixtures"


def _ex(qid: str, context: str, answer: str, title: str = "富士山", nth: int = 0) -> QAExample:
    start = -1
    for _ in range(nth + 1):
        start = context.index(answer, start + 1)
    return QAExample(qid, "問い?", context, (Answer(answer, start),), title, "f.json")


def test_every_answer_is_at_its_shifted_offset_in_the_whole_article():
    examples = load_squad(FIXTURES / "tiny_qa.json")
    view = article_view(examples)
    assert [e.id for e in view] == [e.id for e in examples]
    for before, after in zip(examples, view):
        assert before.context in after.context  # the paragraph is inside its article, unchanged
        for a, b in zip(before.answers, after.answers):
            assert after.context[b.start : b.end] == a.text
    # paragraphs of one title become one context
    assert len({e.context for e in view}) == len({(e.source, e.title) for e in examples})


def test_jsquad_title_prefixes_are_kept_once_and_answers_in_them_keep_their_place():
    p1, p2 = "富士山 [SEP] 富士山は高い山である。", "富士山 [SEP] 静岡県にある。富士山は美しい。"
    examples = [_ex("a", p1, "高い山"), _ex("b", p2, "静岡県"), _ex("c", p2, "富士山", nth=0),
                _ex("d", p2, "富士山", nth=1), _ex("e", "別 [SEP] 他の記事。", "他の記事", title="別")]
    view = {e.id: e for e in article_view(examples)}
    assert view["a"].context == "富士山 [SEP] 富士山は高い山である。\n静岡県にある。富士山は美しい。"
    assert view["c"].answers[0].start == 0  # the answer in the title prefix stays in the article's prefix
    for qid in "abcde":
        a = view[qid].answers[0]
        assert view[qid].context[a.start : a.end] == a.text
    assert view["e"].context == "別 [SEP] 他の記事。"  # another article


def test_data_articles_writes_a_squad_file_that_scores_like_the_paragraph_view(tmp_path, capsys):
    out = tmp_path / "articles.json"
    assert main(["data", "articles", str(FIXTURES / "tiny_qa.json"), "--out", str(out)]) == 0
    assert "articles" in capsys.readouterr().out
    loaded = load_squad(out)
    expected = article_view(load_squad(FIXTURES / "tiny_qa.json"))
    assert [(e.id, e.context, e.answers) for e in loaded] == [(e.id, e.context, e.answers) for e in expected]
    gold = tmp_path / "gold.json"
    gold.write_text(json.dumps({e.id: e.answers[0].text for e in loaded}, ensure_ascii=False), "utf-8")
    assert main(["evaluate", "--data", str(out), "--predictions", str(gold)]) == 0
    assert json.loads(capsys.readouterr().out.strip())["exact_match"] == 100.0
    assert to_squad(loaded)["data"]  # round trip


def test_ask_reads_a_whole_document_from_a_file(tmp_path, capsys):
    run = FIXTURES / "runs" / "wave"
    article = "\n".join(p["context"] for a in json.loads((FIXTURES / "tiny_qa.json").read_text("utf-8"))["data"]
                        for p in a["paragraphs"]) * 40  # a long document (~30k characters)
    doc = tmp_path / "doc.txt"
    doc.write_text(article, "utf-8")
    assert main(["ask", "--checkpoint", str(run), "--context-file", str(doc), "--question", "富士山の標高は?",
                 "--json", "--verbose"]) == 0
    captured = capsys.readouterr()
    answer = json.loads(captured.out.strip().splitlines()[-1])
    assert answer["windows"] > 1 and "window(s)" in captured.err
    for cand in answer["candidates"]:
        assert article[cand["start"] : cand["end"]] == cand["text"]
    assert main(["ask", "--checkpoint", str(run), "--context-file", str(tmp_path / "none.txt"), "--question", "x"]) == 2
    assert "--context-file" in capsys.readouterr().err


def test_a_model_without_positions_reads_a_whole_document_in_one_window(tmp_path):
    """`nami ask --whole`: a Wave model without a position table takes the whole context in one window
    (its answer spans still index the context); a model with learned positions refuses a longer window."""
    import pytest
    import torch

    from nami.models import ModelConfig, QAModel
    from nami.pipelines import ask
    from nami.text import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.load(FIXTURES / "runs" / "wave" / "tokenizer")
    torch.manual_seed(0)
    model = QAModel(ModelConfig.from_name("tiny", "wave", vocab_size=tokenizer.vocab_size, max_len=64,
                                          pad_id=tokenizer.pad_id, wave_rope=True, position_embedding="none"))
    run = tmp_path / "nopos"
    model.save_pretrained(run, tokenizer=tokenizer, train_config={"task": "qa", "max_length": 64, "doc_stride": 32,
                                                                  "max_question_tokens": 16})
    document = "".join(p["context"] for a in json.loads((FIXTURES / "tiny_qa.json").read_text("utf-8"))["data"]
                       for p in a["paragraphs"]) * 5
    windowed = ask(run, context=document, question="富士山の標高は?")
    whole = ask(run, context=document, question="富士山の標高は?", whole=True)
    assert windowed["windows"] > 1 and whole["windows"] == 1
    for cand in whole["candidates"]:
        assert document[cand["start"]:cand["end"]] == cand["text"]
    with pytest.raises(ValueError, match="reads at most 64 tokens"):
        ask(FIXTURES / "runs" / "wave", context=document, question="富士山の標高は?", whole=True)


def test_the_long_context_benchmark_records_both_levels_and_buckets(tmp_path):
    from nami.bench.long_context import run_long_context

    run = FIXTURES / "runs" / "wave"
    result = run_long_context({"wave-windows": (str(run), "windows"), "transformer": (str(FIXTURES / "runs" /
                                                                                        "transformer"), "windows")},
                              data=str(FIXTURES / "tiny_qa.json"), out=str(tmp_path / "lc.json"), quiet=True,
                              buckets=(200, float("inf")))
    wave = result["readers"]["wave-windows"]
    assert wave["family"] == "wave" and result["readers"]["transformer"]["family"] == "attention"
    for level in ("article", "paragraph"):
        assert 0 <= wave[level]["f1"] <= 100 and wave[level]["questions_per_s"] > 0
    assert sum(b["questions"] for b in wave["buckets"]) == wave["article"]["count"] == 24
    for suffix in (".json", ".md", ".png"):
        assert (tmp_path / f"lc{suffix}").stat().st_size > 0
