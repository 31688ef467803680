"""The reader's page: one self-contained HTML file per study (plain HTML, CSS and JavaScript, no framework).

It works offline from a folder or a USB stick in any current browser and makes no network request at all: the
images are embedded as ``data:`` URIs, the study as JSON in the page, and a Content-Security-Policy
(``default-src 'none'``, images only from ``data:``, inline style and script only) makes the browser refuse any
request the page might try. A reader picks a name and answers with the keyboard (or the mouse); every answer is
kept in the browser's localStorage at once, under the study id and the reader's name, so a closed tab resumes
where it stopped; the answers export as ``answers-<reader>-<study>.json`` (a download, with a copyable text as
the fallback). The page knows nothing of the truth: items carry random ids and the random image names only.
"""

from __future__ import annotations

import base64
import html
import json
import re

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")
ANSWERS_FORMAT = "medti-reader-study-answers"


def _script_json(obj) -> str:
    """JSON safe inside a <script> element (no '</' to close it early, no HTML comment openers)."""
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            .replace("</", "<\\/").replace("<!--", "<\\!--"))


def render_page(study: dict, images: dict[str, bytes]) -> str:
    """The page of ``study`` (the public study.json) with ``images`` (id -> PNG bytes) embedded."""
    uris = {i: "data:image/png;base64," + base64.b64encode(images[i]).decode("ascii") for i in sorted(images)}
    values = {"CSP": html.escape(CSP, quote=True), "TITLE": html.escape(study["title"]),
              "STUDY_JSON": _script_json(study), "IMAGES_JSON": _script_json(uris), "ANSWERS_FORMAT": ANSWERS_FORMAT}
    # one pass: a value (a title, say) that happens to hold a placeholder is not substituted again
    return re.sub(r"%(CSP|TITLE|STUDY_JSON|IMAGES_JSON|ANSWERS_FORMAT)%", lambda m: values[m.group(1)], _TEMPLATE)


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%CSP%">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>%TITLE%</title>
<style>
:root{--zoom:1;--fg:#1d1d1f;--muted:#666;--accent:#0b5cad;--bg:#fafafa}
*{box-sizing:border-box}
body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg);
line-height:1.4}
main{max-width:1200px;margin:0 auto;padding:1em 1.5em 3em}
h1{font-size:1.4em;margin:.3em 0}
.muted{color:var(--muted);font-size:.9em}
.screen{display:none}
body[data-screen=start] #start,body[data-screen=study] #study,body[data-screen=done] #done{display:block}
#warning{display:none;background:#fff3cd;border:2px solid #d39e00;padding:.6em 1em;margin:.6em 0;font-weight:600}
#warning.on{display:block}
#start select{font-size:1.1em;padding:.3em;min-width:14em}
button{font-size:1em;padding:.5em 1.1em;margin:.25em;border:1px solid #999;border-radius:6px;background:#fff;
cursor:pointer}
button:hover{border-color:var(--accent)}
button.primary{background:var(--accent);color:#fff;border-color:var(--accent)}
button.chosen{outline:3px solid var(--accent);font-weight:700}
kbd{display:inline-block;border:1px solid #aaa;border-bottom-width:2px;border-radius:4px;padding:0 .35em;
font-size:.85em;background:#fff;font-family:ui-monospace,monospace;margin-right:.3em}
#bar{height:8px;background:#e4e4e4;border-radius:4px;overflow:hidden;margin:.3em 0 .8em}
#bar div{height:100%;background:var(--accent);width:0}
#head{display:flex;justify-content:space-between;align-items:baseline;flex-wrap:wrap;gap:.5em}
#part{font-weight:700}
#question{font-size:1.15em;margin:.4em 0 .2em}
#class-line{font-size:1.05em;margin:.2em 0}
#class-line b{color:var(--accent)}
#stage{display:flex;justify-content:center;gap:2em;margin:.8em 0;flex-wrap:wrap}
#stage figure{margin:0;text-align:center}
#stage img{background:#000;display:block;width:calc(var(--w) * var(--zoom));height:auto;max-width:none}
#stage.single{--w:min(60vh,90vw)}
#stage.pair{--w:min(56vh,44vw)}
#stage figcaption{margin-top:.3em;font-weight:600}
#options{text-align:center}
#options button{min-width:9em}
#answered{text-align:center;min-height:1.4em;color:var(--muted)}
#help{display:none;position:fixed;inset:10% 20%;background:#fff;border:2px solid #555;padding:1em 2em;overflow:auto;
box-shadow:0 4px 30px rgba(0,0,0,.3)}
body.help #help{display:block}
#export-box{display:none;margin-top:1em}
#export-box.on{display:block}
#export-box textarea{width:100%;height:12em;font-family:ui-monospace,monospace;font-size:.8em}
footer{margin-top:1.2em;font-size:.85em;color:var(--muted);text-align:center}
</style>
</head>
<body data-screen="start">
<main>
<div id="warning"></div>
<section id="start" class="screen">
  <h1 id="title"></h1>
  <p class="muted">Study <span id="study-id"></span> · <span id="count"></span> images. This page works offline and
  sends nothing anywhere.</p>
  <ol>
    <li>Choose your name and press <kbd>Enter</kbd>.</li>
    <li>Answer each image with the keys shown under it (or click). The next image follows at once;
      <kbd>Backspace</kbd> goes back to change an answer.</li>
    <li>Your answers are kept in this browser as you go. If the tab closes, open this file again in the same
      browser and choose your name: you continue where you stopped.</li>
    <li>At the end press <kbd>E</kbd> (or Export) to save your answers file, and send it back unchanged.</li>
  </ol>
  <p><label>Reader: <select id="reader"></select></label>
    <button id="go" class="primary">Start</button></p>
  <p id="resume-line" class="muted"></p>
</section>
<section id="study" class="screen">
  <div id="head"><span id="part"></span><span id="progress" class="muted"></span></div>
  <div id="bar"><div></div></div>
  <div id="class-line"></div>
  <div id="question"></div>
  <div id="stage"></div>
  <div id="options"></div>
  <div id="answered"></div>
  <footer><kbd>Backspace</kbd>back · <kbd>PageDown</kbd>forward · <kbd>+</kbd><kbd>-</kbd>zoom ·
    <kbd>E</kbd>export · <kbd>Esc</kbd>change reader · <kbd>?</kbd>all keys</footer>
</section>
<section id="done" class="screen">
  <h1>Thank you</h1>
  <p id="done-line"></p>
  <p><button id="export" class="primary">Export answers (E)</button>
     <button id="review">Review answers (Backspace)</button></p>
</section>
<div id="export-box">
  <p id="export-line"></p>
  <textarea id="export-text" readonly></textarea>
</div>
</main>
<div id="help"><h2>Keys</h2><div id="help-keys"></div>
<p><kbd>Backspace</kbd> or <kbd>PageUp</kbd> previous image · <kbd>PageDown</kbd> next image ·
<kbd>+</kbd> / <kbd>-</kbd> zoom · <kbd>E</kbd> export answers · <kbd>Esc</kbd> back to the reader choice ·
<kbd>?</kbd> close this help</p></div>
<script id="study-data" type="application/json">%STUDY_JSON%</script>
<script id="image-data" type="application/json">%IMAGES_JSON%</script>
<script>
(function () {
  'use strict';
  var S = JSON.parse(document.getElementById('study-data').textContent);
  var IMG = JSON.parse(document.getElementById('image-data').textContent);
  var PREFIX = 'medti-reader-study:' + S.study_id + ':';
  var TASK_NAMES = {'real-or-synthetic': 'Real or synthetic', 'which-class': 'Which class',
                    'which-better': 'Which is better'};
  var $ = function (id) { return document.getElementById(id); };
  var store = (function () {
    try {
      var k = PREFIX + 'probe';
      window.localStorage.setItem(k, '1');
      window.localStorage.removeItem(k);
      return window.localStorage;
    } catch (e) { return null; }
  })();
  var state = null, order = null, pos = 0, shownAt = 0, zoom = 1, exported = false;

  function load(reader) {
    if (!store) { return null; }
    try { return JSON.parse(store.getItem(PREFIX + 'reader:' + reader) || 'null'); } catch (e) { return null; }
  }
  function save() {
    if (!store || !state) { return; }
    state.pos = pos;
    try { store.setItem(PREFIX + 'reader:' + state.reader, JSON.stringify(state)); }
    catch (e) { warn('The browser refused to keep the answers (storage full?): export now.'); }
  }
  function warn(text) { var w = $('warning'); w.textContent = text; w.className = 'on'; }
  function answeredCount() { return order ? order.filter(function (o) { return state.answers[o[0]]; }).length : 0; }
  function firstUnanswered(from) {
    for (var k = 0; k < order.length; k++) {
      var i = (from + k) % order.length;
      if (!state.answers[order[i][0]]) { return i; }
    }
    return -1;
  }
  function keyName(e) { return e.key.length === 1 ? e.key.toLowerCase() : e.key; }
  function kbd(text) { var k = document.createElement('kbd'); k.textContent = text; return k; }
  function keyLabel(k) { return k === 'ArrowLeft' ? '\u2190' : k === 'ArrowRight' ? '\u2192' : k.toUpperCase(); }

  // -- start ----------------------------------------------------------------------------------------------
  function setupStart() {
    document.title = S.title;
    $('title').textContent = S.title;
    $('study-id').textContent = S.study_id;
    var sel = $('reader');
    S.readers.forEach(function (r) {
      var o = document.createElement('option'); o.value = r; o.textContent = r; sel.appendChild(o);
    });
    var last = store ? store.getItem(PREFIX + 'last-reader') : null;
    if (last && S.readers.indexOf(last) >= 0) { sel.value = last; }
    sel.addEventListener('change', describeReader);
    $('go').addEventListener('click', function () { start(sel.value); });
    $('export').addEventListener('click', exportAnswers);
    $('review').addEventListener('click', function () { show(order.length - 1); });
    if (!store) {
      warn('This browser does not keep answers for this page (private window or storage turned off): ' +
           'answer in one sitting and export before closing the tab.');
    }
    var helpKeys = $('help-keys');
    S.tasks.forEach(function (t) {
      var p = document.createElement('p');
      p.appendChild(document.createTextNode(TASK_NAMES[t] + ': '));
      S.options[t].forEach(function (o) {
        o.keys.forEach(function (k) { p.appendChild(kbd(keyLabel(k))); });
        p.appendChild(document.createTextNode(o.label + '  '));
      });
      helpKeys.appendChild(p);
    });
    describeReader();
    sel.focus();
  }
  function describeReader() {
    var r = $('reader').value, saved = load(r), n = S.orders[r].length;
    $('count').textContent = n;
    var k = saved ? Object.keys(saved.answers).length : 0;
    $('resume-line').textContent = k ? (r + ': ' + k + ' of ' + n + ' answered; Start continues from there.') : '';
  }
  function start(reader) {
    if (S.readers.indexOf(reader) < 0) { return; }
    order = S.orders[reader];
    state = load(reader) || {reader: reader, answers: {}, started: new Date().toISOString(), pos: 0};
    if (store) { store.setItem(PREFIX + 'last-reader', reader); }
    var next = firstUnanswered(0);
    if (next < 0) { finish(); return; }
    var p = (typeof state.pos === 'number' && state.pos >= 0 && state.pos < order.length) ? state.pos : next;
    show(state.answers[order[p][0]] ? next : p);
  }

  // -- items ----------------------------------------------------------------------------------------------
  function show(i) {
    pos = Math.max(0, Math.min(i, order.length - 1));
    var entry = order[pos], id = entry[0], swap = entry[1], item = S.items[id], t = item.task;
    document.body.dataset.screen = 'study';
    document.body.dataset.item = id;
    document.body.dataset.task = t;
    var partNo = S.tasks.indexOf(t) + 1, inPart = 0, ofPart = 0;
    order.forEach(function (o, j) { if (S.items[o[0]].task === t) { ofPart++; if (j <= pos) { inPart++; } } });
    $('part').textContent = 'Part ' + partNo + ' of ' + S.tasks.length + ': ' + TASK_NAMES[t] +
      ' (' + inPart + ' of ' + ofPart + ')';
    var done = answeredCount();
    $('progress').textContent = 'Image ' + (pos + 1) + ' of ' + order.length + ' \u00b7 ' + done + ' answered';
    $('bar').firstElementChild.style.width = (100 * done / order.length) + '%';
    $('question').textContent = S.questions[t];
    var cl = $('class-line');
    cl.textContent = '';
    if (item['class']) {
      cl.appendChild(document.createTextNode('Class: '));
      var b = document.createElement('b'); b.textContent = item['class'].replace(/_/g, ' '); cl.appendChild(b);
    }
    var stage = $('stage');
    stage.textContent = '';
    var shown = item.images.length === 2 && swap ? [item.images[1], item.images[0]] : item.images;
    stage.className = shown.length === 2 ? 'pair' : 'single';
    shown.forEach(function (imgId, j) {
      var fig = document.createElement('figure'), img = document.createElement('img');
      img.src = IMG[imgId];
      img.alt = shown.length === 2 ? (j === 0 ? 'left image' : 'right image') : 'image';
      img.draggable = false;
      fig.appendChild(img);
      if (shown.length === 2) {
        var cap = document.createElement('figcaption');
        cap.textContent = j === 0 ? '\u2190 Left' : 'Right \u2192';
        fig.appendChild(cap);
      }
      stage.appendChild(fig);
    });
    var prev = state.answers[id], opts = $('options');
    opts.textContent = '';
    S.options[t].forEach(function (o) {
      var btn = document.createElement('button');
      o.keys.forEach(function (k) { btn.appendChild(kbd(keyLabel(k))); });
      btn.appendChild(document.createTextNode(o.label));
      if (prev && optionValue(t, o.value, entry) === prev.answer) { btn.className = 'chosen'; }
      btn.addEventListener('click', function () { answer(o.value); });
      opts.appendChild(btn);
    });
    $('answered').textContent = prev ? 'Answered; a key changes the answer.' : '';
    shownAt = performance.now();
    save();
  }
  // which-better records the image chosen (the side is kept too); the other tasks their value
  function optionValue(task, value, entry) {
    if (task !== 'which-better') { return value; }
    var imgs = S.items[entry[0]].images, left = entry[1] ? imgs[1] : imgs[0], right = entry[1] ? imgs[0] : imgs[1];
    return value === 'left' ? left : right;
  }
  function answer(value) {
    var entry = order[pos], id = entry[0], t = S.items[id].task, prev = state.answers[id];
    var rec = {answer: optionValue(t, value, entry), ms: Math.round(performance.now() - shownAt),
               at: new Date().toISOString(), changes: prev ? (prev.changes || 0) + 1 : 0};
    if (t === 'which-better') { rec.side = value; }
    state.answers[id] = rec;
    exported = false;
    if (pos + 1 < order.length && !allAnswered()) { show(pos + 1); return; }
    var next = firstUnanswered(pos);
    if (next < 0) { save(); finish(); } else { show(next); }
  }
  function allAnswered() { return firstUnanswered(0) < 0; }
  function finish() {
    document.body.dataset.screen = 'done';
    document.body.dataset.item = '';
    $('done-line').textContent = 'All ' + order.length + ' images answered, ' + state.reader +
      '. Export your answers and send the file back.';
    save();
  }

  // -- export ---------------------------------------------------------------------------------------------
  function answersDocument() {
    var list = [];
    order.forEach(function (o) {
      var a = state.answers[o[0]];
      if (!a) { return; }
      var rec = {item: o[0], answer: a.answer, ms: a.ms, at: a.at, changes: a.changes || 0};
      if (a.side) { rec.side = a.side; }
      list.push(rec);
    });
    return {format: '%ANSWERS_FORMAT%', version: 1, study_id: S.study_id, title: S.title, reader: state.reader,
            started: state.started, exported: new Date().toISOString(), complete: list.length === order.length,
            n_items: order.length, user_agent: navigator.userAgent, answers: list};
  }
  function exportAnswers() {
    if (!state) { return; }
    var doc = answersDocument(), text = JSON.stringify(doc, null, 1);
    var name = 'answers-' + state.reader + '-' + S.study_id.slice(0, 8) + '.json';
    try {
      var url = URL.createObjectURL(new Blob([text], {type: 'application/json'}));
      var a = document.createElement('a');
      a.href = url; a.download = name; a.style.display = 'none';
      document.body.appendChild(a); a.click();
      setTimeout(function () { URL.revokeObjectURL(url); a.remove(); }, 10000);
    } catch (e) { /* the text below is the fallback */ }
    exported = true;
    $('export-line').textContent = 'Saved ' + name + ' (' + doc.answers.length + ' of ' + doc.n_items +
      ' answered) to your downloads. If no file appeared, copy this text into a file of that name:';
    $('export-text').value = text;
    $('export-box').className = 'on';
    $('export-box').scrollIntoView({block: 'nearest'});
  }

  // -- keys -----------------------------------------------------------------------------------------------
  document.addEventListener('keydown', function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var k = keyName(e), screen = document.body.dataset.screen;
    if (k === '?') { document.body.classList.toggle('help'); e.preventDefault(); return; }
    if (screen === 'start') {
      if (k === 'Enter') { e.preventDefault(); start($('reader').value); }
      return;
    }
    if (e.repeat) { return; }
    if (k === 'e') { e.preventDefault(); exportAnswers(); return; }
    if (k === 'Escape') {
      document.body.classList.remove('help');
      document.body.dataset.screen = 'start'; describeReader(); $('reader').focus(); return;
    }
    if (screen === 'done') {
      if (k === 'Backspace' || k === 'PageUp') { e.preventDefault(); show(order.length - 1); }
      return;
    }
    if (k === 'Backspace' || k === 'PageUp') { e.preventDefault(); show(pos - 1); return; }
    if (k === 'PageDown') { e.preventDefault(); show(pos + 1); return; }
    if (k === '+' || k === '=') { zoom = Math.min(3, zoom * 1.25); setZoom(); return; }
    if (k === '-') { zoom = Math.max(0.3, zoom / 1.25); setZoom(); return; }
    var t = S.items[order[pos][0]].task;
    var hit = S.options[t].filter(function (o) { return o.keys.indexOf(k) >= 0; })[0];
    if (hit) { e.preventDefault(); answer(hit.value); }
  });
  function setZoom() { document.documentElement.style.setProperty('--zoom', zoom); }
  window.addEventListener('beforeunload', function (e) {
    if (!store && state && Object.keys(state.answers).length && !exported) { e.preventDefault(); e.returnValue = ''; }
  });
  setupStart();
})();
</script>
</body>
</html>
"""
