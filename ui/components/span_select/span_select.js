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
      if (e.ref) wrap.dataset.ref = e.ref;
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

// Per component instance (Streamlit's frontend key), kept in the module across reruns: a rerun that comes
// between a mousedown and its mouseup (another widget's, or the seen report's) calls this function again,
// and a drag or click held only in the old call's variables was lost.
const INSTANCES = new Map();

function instance(key, data) {
  let st = INSTANCES.get(key);
  if (!st) {
    st = { anchor: -1, focus: -1, seen: new Set(), sent: 0, timer: null };
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
  const selected = data && Number.isInteger(data.selected) ? data.selected : -1;
  const { chars, owner } = render(box, text, entities, selected);
  hint.textContent = (data && data.hint) || "";
  const st = instance(key, data);

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
    if (lo === hi && owner[lo] >= 0) {
      paint();
      trigger("pick", { idx: owner[lo] });
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
