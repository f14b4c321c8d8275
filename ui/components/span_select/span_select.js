// Span selection over a document, offsets in Python code points.
//
// Every code point of the text becomes its own <span data-i="N">, where N is the code point's index in the
// Python string. `for (const ch of text)` walks a JS string by code point (an emoji outside the BMP is ONE
// step although it is two UTF-16 units), so N counts exactly what Python's len()/slicing counts. A mouse
// selection is read from the data-i of the elements it starts and ends on, never from a DOM Range offset
// (which counts UTF-16 units), so the offsets sent back are Python offsets on Chinese, Latin, digits and
// emoji alike. The selected characters go back too; Python checks text[start:end] equals them.
//
// Triggers (one rerun each): selection {start, end, text}, pick {idx} (a click on an entity), key {key}.
// State: seen, the refs of the entities that have been at least half on screen (an IntersectionObserver;
// the part of the window under the page's sticky decision bar does not count). It is sent only when it
// grows past what was sent (or what the script says it knows, data.seen, when that is less), 300 ms after
// it grew or right before a trigger, so "accept the rest" can tell how many entities the reviewer never had
// in view.
//
// A mousedown on the text first blurs a focused text box: Streamlit takes a typed number when its box
// loses focus, and preventDefault (needed for the drag) would otherwise keep the focus, so the typed value
// was never sent and a rerun showed the old one.

const BAR_PX = 180; // the height the page's sticky decision bar may cover at the bottom of the window
const KEYS = new Set(["a", "r", "n", "s", "u", "x", "Escape", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);

function typing(target) {
  const el = target && target.closest ? target : null;
  if (!el) return false;
  const tag = (el.tagName || "").toLowerCase();
  return tag === "input" || tag === "textarea" || tag === "select" || el.isContentEditable;
}

// Nested entities (a span model's) are nested wrappers, every one drawn: an enclosing entity's wrapper is
// padded LEVEL_PX lower per level of entities inside it, so the outlines and labels of the levels stack and
// each is visible. A span crossing another is cut where the other ends (the rest is another piece,
// data-part), so the wrappers nest. owner[k] lists the entities over character k, the innermost first: a
// click picks the innermost, a click again on the same character its enclosing one (and round again); a
// click on an entity's label (its <sup>) picks that entity.
const LEVEL_PX = 6;

function nest(entities, n) {
  const cmp = (p, q) => p.s - q.s || q.e - p.e || p.ent.i - q.ent.i;
  const queue = entities
    .filter((e) => Number.isInteger(e.start) && Number.isInteger(e.end) && e.start >= 0 && e.end <= n && e.start < e.end)
    .map((e) => ({ s: e.start, e: e.end, ent: e }))
    .sort(cmp);
  const roots = [];
  const stack = [];
  while (queue.length) {
    const item = queue.shift();
    let end = item.e;
    while (stack.length && stack[stack.length - 1].e <= item.s) stack.pop();
    const top = stack.length ? stack[stack.length - 1] : null;
    if (top && top.e < end) {
      queue.push({ s: top.e, e: end, ent: item.ent }); // the rest, after the piece it crosses
      queue.sort(cmp);
      end = top.e;
    }
    const piece = { s: item.s, e: end, ent: item.ent, children: [], height: 1 };
    piece.first = item.s === item.ent.start;
    piece.last = end === item.ent.end;
    (top ? top.children : roots).push(piece);
    stack.push(piece);
  }
  const height = (p) => (p.height = 1 + Math.max(0, ...p.children.map(height)));
  roots.forEach(height);
  return roots;
}

function drawPiece(parent, piece, chars, owner, selected, outer) {
  const e = piece.ent;
  const wrap = document.createElement("span");
  wrap.className = `ss-ent ss-${e.state}` + (e.i === selected ? " ss-current" : "");
  wrap.dataset.e = String(e.i);
  wrap.dataset.label = e.label;
  wrap.dataset.state = e.state;
  wrap.dataset.level = String(outer.length + 1);
  if (!(piece.first && piece.last)) wrap.dataset.part = "1";
  if (e.ref) wrap.dataset.ref = e.ref;
  const here = `${e.label} (${e.state}) [${e.start}, ${e.end})`;
  wrap.title = [here, ...outer.map((o) => `inside ${o}`).reverse()].join(" · ");
  if (e.colour) wrap.style.background = e.colour;
  wrap.style.paddingBottom = `${(piece.height - 1) * LEVEL_PX}px`;
  let k = piece.s;
  const chain = [...outer, here];
  for (const child of piece.children) {
    for (; k < child.s; k++) wrap.appendChild(charSpan(chars[k], k));
    drawPiece(wrap, child, chars, owner, selected, chain);
    k = child.e;
  }
  for (; k < piece.e; k++) wrap.appendChild(charSpan(chars[k], k));
  for (let j = piece.s; j < piece.e; j++) owner[j].push(e.i); // children pushed theirs first: innermost first
  if (piece.last) {
    const sup = document.createElement("sup");
    sup.textContent = e.label;
    sup.dataset.pick = String(e.i);
    wrap.appendChild(sup);
  }
  parent.appendChild(wrap);
}

function render(box, text, entities, selected) {
  box.textContent = "";
  const chars = Array.from(text); // code points, the same units as Python's str
  const owner = chars.map(() => []);
  const roots = nest(entities, chars.length);
  let i = 0;
  for (const piece of roots) {
    for (; i < piece.s; i++) box.appendChild(charSpan(chars[i], i));
    drawPiece(box, piece, chars, owner, selected, []);
    i = piece.e;
  }
  for (; i < chars.length; i++) box.appendChild(charSpan(chars[i], i));
  const levels = Math.max(1, ...roots.map((p) => p.height));
  box.style.lineHeight = `calc(2.1em + ${(levels - 1) * LEVEL_PX}px)`;
  return { chars, owner };
}

function charSpan(ch, i) {
  const s = document.createElement("span");
  s.dataset.i = String(i);
  s.textContent = ch;
  return s;
}

// Per component instance (Streamlit's frontend key), kept in the module across reruns: a rerun that comes
// between a mousedown and its mouseup (another widget's, or the seen report's) calls this function again,
// and a drag or click held only in the old call's variables was lost.
const INSTANCES = new Map();

function instance(key, data) {
  let st = INSTANCES.get(key);
  if (!st) {
    st = { anchor: -1, focus: -1, seen: new Set(), sent: 0, timer: null, selected: -1, picks: [], base: -1, refs: "" };
    INSTANCES.set(key, st);
  }
  const known = Array.isArray(data && data.seen) ? data.seen : [];
  for (const ref of known) st.seen.add(ref);
  st.sent = Math.min(st.sent, known.length); // the script knows fewer (its state was dropped): send again
  return st;
}

export default function (component) {
  const { data, key, parentElement, setStateValue, setTriggerValue } = component;
  const box = parentElement.querySelector(".ss-text");
  const hint = parentElement.querySelector(".ss-hint");
  const text = (data && data.text) || "";
  const entities = (data && data.entities) || [];
  const st = instance(key, data);
  // The selected entity: the script's, or the latest pick made here. The rerun a pick starts draws this
  // component before the script reads the pick, so data.selected lags one pick behind: while it names the
  // entity selected before the picks made here, or one of those picks but the latest, the latest stands (it
  // is outlined, and a click again on the same character goes on from it). Anything else the script sends
  // (its picker, a Pick button, other entities) is the selection.
  const given = data && Number.isInteger(data.selected) ? data.selected : -1;
  const refs = entities.map((e) => e.ref).join("|");
  const last = st.picks.length ? st.picks[st.picks.length - 1] : null;
  if (last !== null && refs === st.refs && given !== last && (given === st.base || st.picks.includes(given))) {
    st.selected = last;
  } else {
    st.picks = [];
    st.selected = given;
  }
  st.refs = refs;
  const { chars, owner } = render(box, text, entities, st.selected);
  hint.textContent = (data && data.hint) || "";
  const pick = (idx) => {
    if (!st.picks.length) st.base = st.selected;
    st.picks = [...st.picks.slice(-20), idx];
    st.selected = idx;
    for (const el of box.querySelectorAll(".ss-ent")) el.classList.toggle("ss-current", Number(el.dataset.e) === idx);
    trigger("pick", { idx });
  };

  const indexOf = (ev) => {
    const target = ev.composedPath ? ev.composedPath()[0] : ev.target; // inside the shadow root too
    const el = target && target.closest ? target.closest("[data-i]") : null;
    return el && box.contains(el) ? Number(el.dataset.i) : -1;
  };
  const paint = () => {
    const lo = Math.min(st.anchor, st.focus);
    const hi = Math.max(st.anchor, st.focus);
    for (const el of box.querySelectorAll("[data-i]")) {
      const k = Number(el.dataset.i);
      el.classList.toggle("ss-sel", st.anchor >= 0 && k >= lo && k <= hi);
    }
  };
  if (st.anchor >= chars.length) st.anchor = -1; // another text since the mousedown
  if (st.anchor >= 0) paint();
  const onDown = (ev) => {
    if (ev.button !== 0) return;
    const target = ev.composedPath ? ev.composedPath()[0] : ev.target;
    const label = target && target.closest ? target.closest("sup[data-pick]") : null;
    if (label && box.contains(label)) {
      ev.preventDefault(); // an entity's label: pick that entity (an enclosing one whose text is all inner)
      st.anchor = -1;
      pick(Number(label.dataset.pick));
      return;
    }
    const k = indexOf(ev);
    if (k < 0) return;
    const active = document.activeElement;
    if (active && typing(active) && active.blur) active.blur();
    ev.preventDefault();
    st.anchor = k;
    st.focus = k;
    paint();
  };
  const onOver = (ev) => {
    if (st.anchor < 0) return;
    const k = indexOf(ev);
    if (k >= 0 && k !== st.focus) {
      st.focus = k;
      paint();
    }
  };
  const report = () => {
    if (st.timer !== null) clearTimeout(st.timer);
    st.timer = null;
    if (st.seen.size > st.sent) {
      st.sent = st.seen.size;
      setStateValue("seen", Array.from(st.seen));
    }
  };
  // A trigger goes after any pending seen report, never before it: a report sent after a trigger starts a
  // rerun that interrupts the trigger's one, and the trigger (sent once) is lost.
  const trigger = (name, value) => {
    report();
    setTriggerValue(name, value);
  };
  const onUp = (ev) => {
    if (st.anchor < 0) return;
    const k = indexOf(ev);
    if (k >= 0) st.focus = k;
    const lo = Math.min(st.anchor, st.focus);
    const hi = Math.max(st.anchor, st.focus);
    st.anchor = -1;
    if (lo === hi && owner[lo].length) {
      paint();
      const chain = owner[lo]; // innermost first; a click again goes one level out
      const at = chain.indexOf(st.selected);
      pick(chain[at >= 0 ? (at + 1) % chain.length : 0]);
      return;
    }
    trigger("selection", { start: lo, end: hi + 1, text: chars.slice(lo, hi + 1).join("") });
  };
  const onKey = (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) return;
    if (!KEYS.has(ev.key)) return;
    ev.preventDefault();
    trigger("key", { key: ev.key });
  };
  const later = () => {
    if (st.seen.size > st.sent && st.timer === null) st.timer = setTimeout(report, 300);
  };
  const observer =
    typeof IntersectionObserver === "undefined"
      ? null
      : new IntersectionObserver(
          (entries) => {
            for (const en of entries) {
              const ref = en.target.dataset.ref;
              if (en.isIntersecting && ref) st.seen.add(ref);
            }
            later();
          },
          { threshold: 0.5, rootMargin: `0px 0px -${BAR_PX}px 0px` },
        );
  if (observer) for (const el of box.querySelectorAll(".ss-ent[data-ref]")) observer.observe(el);
  later();
  box.addEventListener("mousedown", onDown);
  box.addEventListener("mouseover", onOver);
  document.addEventListener("mouseup", onUp);
  if (data && data.shortcuts) document.addEventListener("keydown", onKey);
  return () => {
    box.removeEventListener("mousedown", onDown);
    box.removeEventListener("mouseover", onOver);
    document.removeEventListener("mouseup", onUp);
    document.removeEventListener("keydown", onKey);
    if (observer) observer.disconnect();
    if (st.timer !== null) {
      clearTimeout(st.timer); // the next call (or none) reports
      st.timer = null;
    }
  };
}
