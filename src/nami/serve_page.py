"""The page ``nami serve`` shows at ``/``: one static HTML file with a little JavaScript (no build step,
no CDN, system fonts with Japanese ones first). It reads ``/v1/models``, asks every selected QA model
the same question (answers side by side, each highlighted in the context with its score and the
top-k alternatives), and streams generations of decoder runs with their tokens/s."""

PAGE = """<!doctype html>
<html lang="ja">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nami (波)</title>
<style>
  body { font-family: "Hiragino Sans", "Noto Sans CJK JP", "Noto Sans JP", "Yu Gothic", "Meiryo", sans-serif;
         margin: 0 auto; max-width: 1100px; padding: 1rem 1.5rem; color: #1d2733; background: #fafbfc; }
  h1 { font-size: 1.4rem; margin: 0.2rem 0 1rem; } h1 small { color: #6b7785; font-weight: normal; }
  textarea, input { width: 100%; box-sizing: border-box; font: inherit; padding: 0.5rem; border: 1px solid #c8d0d9;
                    border-radius: 6px; background: white; }
  textarea { min-height: 9rem; }
  label { display: block; margin: 0.7rem 0 0.25rem; font-weight: 600; }
  button { margin-top: 0.8rem; font: inherit; padding: 0.45rem 1.2rem; border: 0; border-radius: 6px;
           background: #1f6feb; color: white; cursor: pointer; } button:disabled { background: #9bb7e0; }
  .models { display: flex; flex-wrap: wrap; gap: 0.4rem 1rem; } .models label { font-weight: normal; margin: 0; }
  .models input { width: auto; margin: 0 0.35rem 0 0; vertical-align: middle; }
  #topk { width: 6rem; }
  .answers { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 1rem; margin-top: 1rem; }
  .card { background: white; border: 1px solid #dde3ea; border-radius: 8px; padding: 0.8rem 1rem; }
  .card h3 { margin: 0 0 0.4rem; font-size: 1rem; } .answer { font-size: 1.15rem; font-weight: 700; }
  .context { white-space: pre-wrap; line-height: 1.7; max-height: 16rem; overflow: auto; margin-top: 0.6rem;
             font-size: 0.92rem; color: #3b4754; } mark { background: #ffe58a; padding: 0 1px; border-radius: 2px; }
  .alt { color: #55616e; font-size: 0.9rem; } .error { color: #b42318; } .meta { color: #6b7785; font-size: 0.85rem; }
  section { margin-bottom: 2rem; } #generated { white-space: pre-wrap; min-height: 3rem; }
  .inside { overflow-x: auto; } .inside table { border-collapse: collapse; font-size: 0.8rem; }
  .inside td, .inside th { padding: 2px 5px; text-align: center; border: 1px solid #eef1f4; white-space: nowrap; }
  .inside th { background: #f3f5f8; font-weight: 600; } .tok { text-align: left !important; font-weight: 600; }
</style>
</head>
<body>
<h1>nami (波) <small>Wave Network 日本語 QA — 質問すると文脈中の答えを強調表示します</small></h1>
<section id="qa">
  <label for="context">文脈 / context</label>
  <textarea id="context">富士山は静岡県と山梨県にまたがる活火山で、標高は3776メートルである。日本で最も高い山として知られ、2013年に世界文化遺産に登録された。</textarea>
  <label for="question">質問 / question</label>
  <input id="question" value="富士山の標高は何メートル?">
  <label>モデル / models</label>
  <div class="models" id="qa-models"></div>
  <label for="topk">候補数 / top-k</label>
  <input id="topk" type="number" min="1" max="20" value="3" style="width: 6rem">
  <button id="ask">質問する / Ask</button>
  <button id="look">中を見る / Look inside</button>
  <div class="answers" id="answers"></div>
  <div class="card inside" id="inside" hidden></div>
</section>
<section id="gen" hidden>
  <label for="prompt">生成 / generate (decoder runs)</label>
  <textarea id="prompt">梅雨は</textarea>
  <div class="models" id="gen-models"></div>
  <button id="generate">生成する / Generate</button>
  <div class="card"><div id="generated"></div><div class="meta" id="speed"></div></div>
</section>
<script>
const esc = (s) => s.replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
function highlight(context, start, end) {
  if (start === null || start === undefined) return esc(context);
  return esc(context.slice(0, start)) + "<mark>" + esc(context.slice(start, end)) + "</mark>" + esc(context.slice(end));
}
async function loadModels() {
  const models = (await (await fetch("/v1/models")).json()).data;
  for (const m of models) {
    const qa = m.task !== "text-generation";
    const box = document.getElementById(qa ? "qa-models" : "gen-models");
    const score = m.scores && m.scores.f1 !== undefined ? ` F1 ${m.scores.f1.toFixed(1)}` : "";
    box.insertAdjacentHTML("beforeend", `<label><input type="${qa ? "checkbox" : "radio"}" name="${qa ? "qa" : "gen"}" ` +
      `value="${esc(m.id)}" checked> ${esc(m.id)} <span class="meta">(${esc(m.arch)}, ${m.params.toLocaleString()} params${score})</span></label>`);
    if (!qa) document.getElementById("gen").hidden = false;
  }
}
async function ask() {
  const button = document.getElementById("ask"); button.disabled = true;
  const context = document.getElementById("context").value, question = document.getElementById("question").value;
  const topK = parseInt(document.getElementById("topk").value || "1", 10);
  const chosen = [...document.querySelectorAll("#qa-models input:checked")].map((i) => i.value);
  const out = document.getElementById("answers"); out.innerHTML = "";
  await Promise.all(chosen.map(async (model) => {
    const t0 = performance.now();
    const response = await fetch("/v1/question-answering", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model, question, context, top_k: topK})});
    const body = await response.json(); const ms = (performance.now() - t0).toFixed(0);
    if (!response.ok) { out.insertAdjacentHTML("beforeend", `<div class="card"><h3>${esc(model)}</h3>` +
      `<div class="error">${esc(body.error.field || "")} ${esc(body.error.message)}</div></div>`); return; }
    const best = body[0] || {answer: "", start: null, end: null, score: null};
    const alts = body.slice(1).map((a) => `<div class="alt">${esc(a.answer)} <span class="meta">` +
      `(${a.score === null ? "" : a.score.toFixed(2)})</span></div>`).join("");
    out.insertAdjacentHTML("beforeend", `<div class="card"><h3>${esc(model)}</h3>` +
      `<div class="answer" data-model="${esc(model)}">${esc(best.answer) || "（答えなし / no answer）"}</div>` +
      `<div class="meta">score ${best.score === null ? "–" : best.score.toFixed(2)} · chars ${best.start}–${best.end} · ${ms} ms</div>` +
      alts + `<div class="context">${highlight(context, best.start, best.end)}</div></div>`);
  }));
  button.disabled = false;
}
async function generate() {
  const model = (document.querySelector("#gen-models input:checked") || {}).value;
  const out = document.getElementById("generated"), speed = document.getElementById("speed");
  out.textContent = ""; speed.textContent = "";
  const t0 = performance.now(); let pieces = 0;
  const response = await fetch("/v1/completions", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({model, prompt: document.getElementById("prompt").value, max_tokens: 64, stream: true})});
  const reader = response.body.getReader(), decoder = new TextDecoder(); let buffer = "";
  while (true) {
    const {value, done} = await reader.read(); if (done) break;
    buffer += decoder.decode(value, {stream: true});
    const events = buffer.split("\\n\\n"); buffer = events.pop();
    for (const event of events) {
      const data = event.replace(/^data: /, ""); if (data === "[DONE]") continue;
      const chunk = JSON.parse(data); if (chunk.error) { out.textContent += " [" + chunk.error.message + "]"; continue; }
      out.textContent += chunk.choices[0].text; if (chunk.choices[0].text) pieces += 1;
      speed.textContent = `${(pieces / ((performance.now() - t0) / 1000)).toFixed(1)} tokens/s`;
    }
  }
}
function cell(value, hue) {  // value in [0, 1]: white to the layer's colour
  const v = Math.max(0, Math.min(1, value));
  return `<td style="background: hsla(${hue}, 80%, 55%, ${(0.08 + 0.8 * v).toFixed(2)})">${value.toFixed(2)}</td>`;
}
async function look() {
  const model = (document.querySelector("#qa-models input:checked") || {}).value;
  const box = document.getElementById("inside"); box.hidden = false; box.textContent = "…";
  const response = await fetch("/v1/inspect", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({model, question: document.getElementById("question").value,
                          context: document.getElementById("context").value})});
  const r = await response.json();
  if (!response.ok) { box.innerHTML = `<div class="error">${esc(r.error.message)}</div>`; return; }
  const finite = (xs) => xs.filter((x) => x !== null);
  const norm = (xs) => { const f = finite(xs), lo = Math.min(...f), hi = Math.max(...f);
                         return (x) => x === null ? 0 : (x - lo) / ((hi - lo) || 1); };
  const ns = norm(r.start_scores), ne = norm(r.end_scores);
  let head = "<tr><th>token</th>" + r.layers.map((l) => `<th title="${esc(l.mixer)}">L${l.block} mixer share</th>` +
    (l.alignment ? `<th>L${l.block} alignment</th>` : "")).join("") + "<th>start</th><th>end</th></tr>";
  let rows = "";
  r.tokens.forEach((t, i) => {
    if (!r.offsets[i]) return;  // question and special tokens: not part of the context
    rows += `<tr><td class="tok">${esc(t)}</td>` + r.layers.map((l) => cell(l.mixer_share[i], 210) +
      (l.alignment ? cell(Math.abs(l.alignment[i]) * 4, 280) : "")).join("") +
      cell(ns(r.start_scores[i]), 120) + cell(ne(r.end_scores[i]), 0) + "</tr>";
  });
  box.innerHTML = `<h3>${esc(model)}: inside, per layer and context token</h3><div class="meta">mixer share: ` +
    `the main mixer's part of each block's mixing (blue: global wave; pale: the conv branch did the work); ` +
    `alignment: mean w/G, the token's share of its dimensions' global norm; start / end: the span head's scores.</div>` +
    `<table>${head}${rows}</table>`;
}
document.getElementById("ask").addEventListener("click", ask);
document.getElementById("look").addEventListener("click", look);
document.getElementById("generate").addEventListener("click", generate);
loadModels();
</script>
</body>
</html>
"""
