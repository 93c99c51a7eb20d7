// The overview: one card per loop in the process, then the latest stalls.

import { h, fill } from "../dom.js";
import { store, loopList, stallOngoing } from "../store.js";
import { loopCard } from "./card.js";
import { stallEntry } from "./common.js";

export function homeView(el) {
  const cardsEl = h("div", { class: "cards" });
  const empty = h("p", { class: "empty" }, "Waiting for the process to register a loop…");
  const stallsEl = h("div", { class: "log" });
  const stallsCard = h("section", { class: "card" }, h("h2", null, "Latest stalls"), stallsEl);
  el.append(h("h1", { class: "page-title" }, "Loops"), empty, cardsEl, stallsCard);
  const cards = new Map();

  function syncCards() {
    const loops = loopList();
    empty.hidden = loops.length > 0;
    stallsCard.hidden = loops.length === 0;
    if (store.conn === "gone" && !loops.length) empty.textContent = "The process is gone and sent no loops.";
    for (const l of loops) {
      if (!cards.has(l.id)) cards.set(l.id, loopCard(cardsEl, l));
    }
    // Keep DOM order = open loops first, then by id.
    for (const l of loops) cardsEl.append(cards.get(l.id).el);
  }

  function renderStalls() {
    const list = [...store.stalls.values()].sort((a, b) => b.id - a.id).slice(0, 8);
    if (!list.length) {
      fill(stallsEl, h("p", { class: "empty" }, "No stalls: no callback has run past the threshold."));
      return;
    }
    fill(stallsEl, list.map((s) => stallEntry(s, { showLoop: store.loops.size > 1 })));
  }

  syncCards();
  renderStalls();
  return {
    update(kind) {
      if (kind === "loops" || kind === "conn") syncCards();
      if (kind === "stall") renderStalls();
      for (const c of cards.values()) c.update(kind === "range");
      if (kind === "tick" && [...store.stalls.values()].some(stallOngoing)) renderStalls();
    },
    destroy() {
      for (const c of cards.values()) c.destroy();
    },
  };
}
