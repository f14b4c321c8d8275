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

const KEYS = new Set(["a", "r", "n", "s", "u", "x", "Escape", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);

function typing(target) {
  const el = target && target.closest ? target : null;
  if (!el) return false;
  const tag = (el.tagName || "").toLowerCase();
  return tag === "input" || tag === "textarea" || tag === "select" || el.isContentEditable;
}

function render(box, text, entities, selected) {
  box.textContent = "";
  const chars = Array.from(text); // code points, the same units as Python's str
  const owner = new Array(chars.length).fill(-1);
  // entities sorted by start; an entity overlapping an earlier one is drawn without its own wrapper
  const order = entities.slice().sort((p, q) => p.start - q.start || q.end - p.end);
  const heads = new Map();
  let cursor = 0;
  for (const e of order) {
    if (e.start < cursor || e.start < 0 || e.end > chars.length || e.start >= e.end) continue;
    heads.set(e.start, e);
    for (let k = e.start; k < e.end; k++) owner[k] = e.i;
    cursor = e.end;
  }
  let i = 0;
  while (i < chars.length) {
    const e = heads.get(i);
    if (e) {
      const wrap = document.createElement("span");
      wrap.className = `ss-ent ss-${e.state}` + (e.i === selected ? " ss-current" : "");
      wrap.dataset.e = String(e.i);
      wrap.dataset.label = e.label;
      wrap.dataset.state = e.state;
      wrap.title = `${e.label} (${e.state}) [${e.start}, ${e.end})`;
      if (e.colour) wrap.style.background = e.colour;
      for (let k = e.start; k < e.end; k++) wrap.appendChild(charSpan(chars[k], k));
      const sup = document.createElement("sup");
      sup.textContent = e.label;
      wrap.appendChild(sup);
      box.appendChild(wrap);
      i = e.end;
    } else {
      box.appendChild(charSpan(chars[i], i));
      i += 1;
    }
  }
  return { chars, owner };
}

function charSpan(ch, i) {
  const s = document.createElement("span");
  s.dataset.i = String(i);
  s.textContent = ch;
  return s;
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const box = parentElement.querySelector(".ss-text");
  const hint = parentElement.querySelector(".ss-hint");
  const text = (data && data.text) || "";
  const entities = (data && data.entities) || [];
  const selected = data && Number.isInteger(data.selected) ? data.selected : -1;
  const { chars, owner } = render(box, text, entities, selected);
  hint.textContent = (data && data.hint) || "";

  let anchor = -1;
  let focus = -1;
  const indexOf = (ev) => {
    const target = ev.composedPath ? ev.composedPath()[0] : ev.target; // inside the shadow root too
    const el = target && target.closest ? target.closest("[data-i]") : null;
    return el && box.contains(el) ? Number(el.dataset.i) : -1;
  };
  const paint = () => {
    const lo = Math.min(anchor, focus);
    const hi = Math.max(anchor, focus);
    for (const el of box.querySelectorAll("[data-i]")) {
      const k = Number(el.dataset.i);
      el.classList.toggle("ss-sel", anchor >= 0 && k >= lo && k <= hi);
    }
  };
  const onDown = (ev) => {
    if (ev.button !== 0) return;
    const k = indexOf(ev);
    if (k < 0) return;
    ev.preventDefault();
    anchor = k;
    focus = k;
    paint();
  };
  const onOver = (ev) => {
    if (anchor < 0) return;
    const k = indexOf(ev);
    if (k >= 0 && k !== focus) {
      focus = k;
      paint();
    }
  };
  const onUp = (ev) => {
    if (anchor < 0) return;
    const k = indexOf(ev);
    if (k >= 0) focus = k;
    const lo = Math.min(anchor, focus);
    const hi = Math.max(anchor, focus);
    anchor = -1;
    if (lo === hi && owner[lo] >= 0) {
      paint();
      setTriggerValue("pick", { idx: owner[lo] });
      return;
    }
    setTriggerValue("selection", { start: lo, end: hi + 1, text: chars.slice(lo, hi + 1).join("") });
  };
  const onKey = (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) return;
    if (!KEYS.has(ev.key)) return;
    ev.preventDefault();
    setTriggerValue("key", { key: ev.key });
  };
  box.addEventListener("mousedown", onDown);
  box.addEventListener("mouseover", onOver);
  document.addEventListener("mouseup", onUp);
  if (data && data.shortcuts) document.addEventListener("keydown", onKey);
  return () => {
    box.removeEventListener("mousedown", onDown);
    box.removeEventListener("mouseover", onOver);
    document.removeEventListener("mouseup", onUp);
    document.removeEventListener("keydown", onKey);
  };
}
