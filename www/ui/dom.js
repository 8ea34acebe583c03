// Tiny DOM helpers (no innerHTML: every string from the engine or the browser is text).

/**
 * Creates an element: h("td", {class: "num", title: "…"}, "text", childNode, [more, children]).
 * Attributes: `class`, `text`, `on<event>` (listener), `hidden` (bool); others via setAttribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** A yes/no badge for a capability ("yes" green, "no" neutral). */
export function yesNo(value, { yes = "yes", no = "no" } = {}) {
  return h("span", { class: value ? "badge yes" : "badge" }, value ? yes : no);
}
