// One camera's timeline: recorded spans and the gaps between them, zoomable
// from a minute to weeks (wheel, pinch, buttons, keys), with the picture under
// the pointer. A click plays from that instant; Shift+drag, or "Select range"
// then a drag or two clicks, chooses a range.

"use strict";

import {clockTime, formatDuration, formatTime, offsetOf} from "./api.js";
import {Preview} from "./preview.js";
import {ticks} from "./ticks.js";

/** The narrowest and widest windows, in seconds. */
const MIN_WIDTH = 60;
const MAX_WIDTH = 8 * 7 * 86400;
const PRESETS = [
  ["15 min", 900],
  ["1 h", 3600],
  ["6 h", 21600],
  ["1 day", 86400],
  ["1 week", 604800],
];
/** A pointer that moves less than this many pixels clicks. */
const CLICK_SLOP = 5;
/** While the window shows now, spans are asked for again this often (ms). */
const LIVE_REFRESH = 4000;
/** Past this many spans in the window, spans closer than a pixel are drawn as one. */
const MANY_SPANS = 1500;

/** How the timeline is used, with a mouse or with fingers. */
const HELP = matchMedia("(pointer: coarse)").matches
  ? "Tap to play · drag to move · pinch or −/+ to zoom · “Select range” to choose what to export"
  : "Click to play · drag to move · wheel or −/+ to zoom · " +
    "Shift+drag or “Select range” to choose what to export";

const now = () => Date.now() / 1000;

function element(tag, className, attributes = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

export class Timeline {
  /**
   * ``load(start, stop)`` resolves to the spans recorded in that window;
   * ``snapshotUrl(t, width)`` is the picture at ``t``; ``onPlay(t)`` and
   * ``onSelect(start, stop)`` are what a click and a chosen range do.
   */
  constructor(root, {load, snapshotUrl, onPlay, onSelect, width = 3600}) {
    this.root = root;
    this.load = load;
    this.snapshotUrl = snapshotUrl;
    this.onPlay = onPlay;
    this.onSelect = onSelect;
    this.end = now() + width * 0.02;
    this.start = this.end - width;
    this.follow = true;
    this.spans = [];
    this.loaded = null; // {start, stop, at}: the window the spans were asked for
    this.loading = 0; // sequence number of the latest request
    this.loadTimer = null;
    this.selection = null;
    this.anchor = null; // first click of a two-click selection
    this.selecting = false;
    this.playhead = null;
    this.pointers = new Map();
    this.drag = null;
    this.pinch = null;
    this.frame = 0;
    this.build();
    this.timer = setInterval(() => this.tick(), 1000);
  }

  destroy() {
    clearInterval(this.timer);
    clearTimeout(this.loadTimer);
    this.preview.hide();
    this.root.replaceChildren();
  }

  // -- building ------------------------------------------------------------

  build() {
    const bar = element("div", "tl-toolbar");
    const zoom = element("div", "tl-group", {role: "group", "aria-label": "Zoom"});
    zoom.append(
      this.button("−", "Zoom out (−)", () => this.zoomBy(2)),
      this.button("+", "Zoom in (+)", () => this.zoomBy(0.5)),
    );
    const presets = element("div", "tl-group tl-presets", {role: "group", "aria-label": "Show"});
    for (const [label, width] of PRESETS) {
      presets.append(this.button(label, `Show ${label}`, () => this.showWidth(width)));
    }
    const move = element("div", "tl-group", {role: "group", "aria-label": "Move"});
    move.append(
      this.button("◀", "Earlier (←)", () => this.panBy(-0.5)),
      this.button("▶", "Later (→)", () => this.panBy(0.5)),
      (this.nowButton = this.button("Now", "Follow the recording", () => this.goLive())),
    );
    this.selectButton = this.button("Select range", "Choose a range to export", () =>
      this.setSelecting(!this.selecting),
    );
    this.selectButton.setAttribute("aria-pressed", "false");
    this.rangeLabel = element("span", "tl-range muted");
    bar.append(zoom, presets, move, this.selectButton, this.rangeLabel);

    const body = element("div", "tl-body");
    this.ticks = element("div", "tl-ticks", {"aria-hidden": "true"});
    this.track = element("div", "tl-track", {
      tabindex: "0",
      role: "group",
      "aria-label":
        "Recorded time: click to play, drag to move, wheel or pinch to zoom, " +
        "Shift+drag to choose a range",
    });
    this.layer = element("div", "tl-layer");
    this.selectionBox = element("div", "tl-selection");
    this.selectionBox.hidden = true;
    this.nowLine = element("div", "tl-now", {title: "Now"});
    this.playheadLine = element("div", "tl-playhead");
    this.playheadLine.hidden = true;
    this.hoverLine = element("div", "tl-hover");
    this.hoverLine.hidden = true;
    this.track.append(
      this.layer,
      this.selectionBox,
      this.nowLine,
      this.playheadLine,
      this.hoverLine,
    );
    this.preview = new Preview(this.snapshotUrl);
    body.append(this.ticks, this.track, this.preview.box);

    this.help = element("p", "tl-help muted");
    this.help.textContent = HELP;
    this.root.replaceChildren(bar, body, this.help);

    this.track.addEventListener("pointerdown", (e) => this.pointerDown(e));
    this.track.addEventListener("pointermove", (e) => this.pointerMove(e));
    this.track.addEventListener("pointerup", (e) => this.pointerUp(e, true));
    this.track.addEventListener("pointercancel", (e) => this.pointerUp(e, false));
    this.track.addEventListener("pointerleave", () => this.hideHover());
    this.track.addEventListener("wheel", (e) => this.wheel(e), {passive: false});
    this.track.addEventListener("keydown", (e) => this.key(e));
    this.resizeObserver = new ResizeObserver(() => this.render());
    this.resizeObserver.observe(this.track);
  }

  button(text, title, action) {
    const node = element("button", "", {type: "button", title});
    node.textContent = text;
    node.addEventListener("click", action);
    return node;
  }

  // -- the window ------------------------------------------------------------

  get width() {
    return this.end - this.start;
  }

  /**
   * Show [start, end] (bounded in width, never far into the future). The
   * window then follows the recording only when ``follow`` says so: moving
   * or zooming it by hand stops that, "Now" starts it again.
   */
  setView(start, end, follow = false) {
    let width = Math.min(MAX_WIDTH, Math.max(MIN_WIDTH, end - start));
    const middle = (start + end) / 2;
    start = middle - width / 2;
    end = middle + width / 2;
    const latest = now() + width * 0.25;
    if (end > latest) {
      start -= end - latest;
      end = latest;
    }
    this.start = start;
    this.end = end;
    this.follow = follow;
    this.changed();
  }

  /** Zoom around ``anchor`` (a pointer's time: the window stops following), or
   * around the live edge while following, or else the middle. */
  zoomBy(factor, anchor = null) {
    const width = Math.min(MAX_WIDTH, Math.max(MIN_WIDTH, this.width * factor));
    const follow = anchor === null && this.follow;
    if (anchor === null) {
      anchor = follow ? Math.min(this.end, now()) : (this.start + this.end) / 2;
    }
    const fraction = (anchor - this.start) / this.width;
    this.setView(anchor - fraction * width, anchor - fraction * width + width, follow);
  }

  panBy(fraction) {
    const shift = this.width * fraction;
    this.setView(this.start + shift, this.end + shift);
  }

  showWidth(width) {
    if (this.follow) {
      const end = now() + width * 0.02;
      this.setView(end - width, end, true);
    } else {
      const middle = this.playhead ?? (this.start + this.end) / 2;
      this.setView(middle - width / 2, middle + width / 2, false);
    }
  }

  /** Show ``[start, stop]`` with a margin (a chosen range, a recording). */
  show(start, stop) {
    const width = Math.max(MIN_WIDTH, (stop - start) * 1.25);
    const middle = (start + stop) / 2;
    this.setView(middle - width / 2, middle + width / 2, false);
  }

  goLive() {
    const end = now() + this.width * 0.02;
    this.setView(end - this.width, end, true);
  }

  tick() {
    if (this.follow && !this.drag && !this.pinch) {
      const end = now() + this.width * 0.02;
      this.start += end - this.end;
      this.end = end;
      this.changed();
    } else {
      this.render();
    }
  }

  changed() {
    this.requestLoad();
    this.render();
  }

  // -- spans -------------------------------------------------------------------

  /** Ask for the window's spans (and half a window around it) when they are not known. */
  requestLoad(force = false) {
    const known = this.loaded;
    const stale =
      !known ||
      known.start > this.start ||
      known.stop < Math.min(this.end, now()) ||
      (this.end > known.at - 5 && Date.now() - known.at * 1000 > LIVE_REFRESH);
    if (!force && !stale) return;
    clearTimeout(this.loadTimer);
    this.loadTimer = setTimeout(() => this.fetchSpans(), force ? 0 : 120);
  }

  async fetchSpans() {
    const margin = this.width / 2;
    const start = this.start - margin;
    const stop = Math.min(this.end + margin, now() + 60);
    const sequence = ++this.loading;
    this.root.classList.add("tl-busy");
    try {
      const spans = await this.load(start, stop);
      if (sequence !== this.loading) return;
      this.spans = spans;
      this.loaded = {start, stop, at: now()};
      this.root.dataset.loaded = String(this.loaded.at);
      this.render();
    } catch (error) {
      if (sequence === this.loading) this.loaded = {start, stop, at: now()};
      this.root.dataset.error = error.message;
    } finally {
      if (sequence === this.loading) this.root.classList.remove("tl-busy");
    }
  }

  /** Refresh the spans now (after a start or a stop, say). */
  reload() {
    this.requestLoad(true);
  }

  /** The span holding ``t``, or null. */
  spanAt(t) {
    return this.spans.find((span) => span.start <= t && t < span.stop) || null;
  }

  /** The first span that starts at or after ``t``, or null. */
  spanAfter(t) {
    return this.spans.find((span) => span.start >= t) || null;
  }

  // -- drawing -----------------------------------------------------------------

  render() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  x(t) {
    return ((t - this.start) / this.width) * 100;
  }

  place(node, start, stop, minPixels = 0) {
    const pixels = this.track.clientWidth || 1;
    let left = this.x(start);
    let width = this.x(stop) - left;
    const least = (minPixels / pixels) * 100;
    if (width < least) {
      left -= (least - width) / 2;
      width = least;
    }
    left = Math.max(-1, left);
    width = Math.min(102 - left, Math.max(0, width));
    node.style.left = `${left}%`;
    node.style.width = `${width}%`;
  }

  draw() {
    const pixels = this.track.clientWidth || 1000;
    const perPixel = this.width / pixels;
    const low = this.start - this.width;
    const high = this.end + this.width;
    const inView = this.spans.filter((span) => span.stop >= low && span.start <= high);
    const join = inView.length > MANY_SPANS ? perPixel : 0;
    const shown = [];
    for (const span of inView) {
      const last = shown[shown.length - 1];
      if (last && span.start - last.stop <= join) {
        last.stop = Math.max(last.stop, span.stop);
      } else {
        shown.push({start: span.start, stop: span.stop});
      }
    }
    const nodes = [];
    shown.forEach((span, index) => {
      const node = element("div", "tl-span", {
        "data-start": span.start.toFixed(3),
        "data-stop": span.stop.toFixed(3),
        title: `Recorded ${formatTime(span.start)} – ${clockTime(span.stop)} ` +
          `(${formatDuration(span.stop - span.start)})`,
      });
      this.place(node, span.start, span.stop, 1);
      nodes.push(node);
      const next = shown[index + 1];
      if (next) {
        const gap = element("div", "tl-gap", {
          "data-start": span.stop.toFixed(3),
          "data-stop": next.start.toFixed(3),
          title: `Nothing recorded ${formatTime(span.stop)} – ${clockTime(next.start)} ` +
            `(${formatDuration(next.start - span.stop)})`,
        });
        this.place(gap, span.stop, next.start, 2);
        nodes.push(gap);
      }
    });
    this.layer.replaceChildren(...nodes);
    this.drawTicks(perPixel);

    const current = now();
    this.nowLine.hidden = current < this.start || current > this.end;
    this.nowLine.style.left = `${this.x(current)}%`;
    if (this.selection) {
      this.selectionBox.hidden = false;
      this.place(this.selectionBox, this.selection.start, this.selection.stop, 2);
    } else {
      this.selectionBox.hidden = true;
    }
    if (this.playhead !== null && this.playhead >= this.start && this.playhead <= this.end) {
      this.playheadLine.hidden = false;
      this.playheadLine.style.left = `${this.x(this.playhead)}%`;
    } else {
      this.playheadLine.hidden = true;
    }
    this.nowButton.classList.toggle("active", this.follow);
    this.nowButton.setAttribute("aria-pressed", String(this.follow));
    const sameDay = new Date(this.start * 1000).toDateString() ===
      new Date(this.end * 1000).toDateString();
    this.rangeLabel.textContent = sameDay
      ? `${formatTime(this.start).slice(0, 19)} – ${clockTime(this.end)} ${offsetOf(this.end)}`
      : `${formatTime(this.start).slice(0, 16)} – ${formatTime(this.end).slice(0, 16)} ` +
        offsetOf(this.end);
    this.root.dataset.start = this.start.toFixed(3);
    this.root.dataset.end = this.end.toFixed(3);
  }

  drawTicks(perPixel) {
    const nodes = ticks(this.start, this.end, perPixel).map(({t, text, day}) => {
      const node = element("span", day ? "tl-tick tl-day" : "tl-tick");
      node.textContent = text;
      node.style.left = `${this.x(t)}%`;
      return node;
    });
    this.ticks.replaceChildren(...nodes);
  }


  // -- what the app sets -------------------------------------------------------

  /** Where playback is; the window moves along when it plays past the right edge. */
  setPlayhead(t) {
    const before = this.playhead;
    this.playhead = t;
    const wasShown = before !== null && before >= this.start && before <= this.end;
    if (t !== null && wasShown && !this.drag && !this.pinch && t > this.end) {
      const width = this.width;
      this.setView(t - width * 0.1, t + width * 0.9, false);
    } else {
      this.render();
    }
  }

  setSelection(start, stop) {
    this.selection = start === null ? null : {start: Math.min(start, stop), stop: Math.max(start, stop)};
    this.render();
  }

  setSelecting(on) {
    this.selecting = on;
    this.anchor = null;
    this.selectButton.setAttribute("aria-pressed", String(on));
    this.selectButton.classList.toggle("active", on);
    this.root.classList.toggle("tl-selecting", on);
    this.help.textContent = on
      ? "Drag across the range, or click its start and then its end (Esc: cancel)"
      : HELP;
  }

  // -- pointers ----------------------------------------------------------------

  timeAt(clientX) {
    const box = this.track.getBoundingClientRect();
    return this.start + ((clientX - box.left) / (box.width || 1)) * this.width;
  }

  pointerDown(e) {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    this.track.setPointerCapture(e.pointerId);
    this.pointers.set(e.pointerId, e.clientX);
    if (this.pointers.size === 2) {
      const [a, b] = [...this.pointers.values()];
      this.drag = null;
      this.pinch = {
        distance: Math.max(10, Math.abs(a - b)),
        width: this.width,
        anchor: this.timeAt((a + b) / 2),
        fraction: ((a + b) / 2 - this.track.getBoundingClientRect().left) /
          (this.track.clientWidth || 1),
      };
    } else if (this.pointers.size === 1) {
      this.drag = {
        x: e.clientX,
        start: this.start,
        end: this.end,
        t: this.timeAt(e.clientX),
        moved: false,
        select: this.selecting || e.shiftKey,
      };
    }
  }

  pointerMove(e) {
    if (!this.pointers.has(e.pointerId)) {
      if (e.pointerType === "mouse") this.hover(e.clientX);
      return;
    }
    this.pointers.set(e.pointerId, e.clientX);
    if (this.pinch && this.pointers.size >= 2) {
      const [a, b] = [...this.pointers.values()];
      const width = this.pinch.width * (this.pinch.distance / Math.max(10, Math.abs(a - b)));
      const bounded = Math.min(MAX_WIDTH, Math.max(MIN_WIDTH, width));
      const start = this.pinch.anchor - this.pinch.fraction * bounded;
      this.setView(start, start + bounded, false);
      return;
    }
    const drag = this.drag;
    if (!drag) return;
    if (!drag.moved && Math.abs(e.clientX - drag.x) < CLICK_SLOP) return;
    drag.moved = true;
    if (drag.select) {
      const t = this.timeAt(e.clientX);
      this.setSelection(drag.t, t);
      this.hover(e.clientX);
    } else {
      const pixels = this.track.clientWidth || 1;
      const shift = (-(e.clientX - drag.x) / pixels) * (drag.end - drag.start);
      this.setView(drag.start + shift, drag.end + shift);
      if (e.pointerType === "mouse") this.hover(e.clientX);
    }
  }

  pointerUp(e, completed) {
    if (!this.pointers.delete(e.pointerId)) return;
    if (this.pinch) {
      if (this.pointers.size === 0) this.pinch = null;
      return;
    }
    const drag = this.drag;
    this.drag = null;
    if (!drag || !completed) return;
    const t = this.timeAt(e.clientX);
    if (drag.moved && drag.select) {
      this.chosen(this.selection.start, this.selection.stop);
    } else if (!drag.moved) {
      this.clicked(t);
    }
    if (e.pointerType !== "mouse") this.hideHover();
  }

  clicked(t) {
    if (!this.selecting) {
      this.onPlay(t);
    } else if (this.anchor === null) {
      this.anchor = t;
      this.setSelection(t, t);
      this.help.textContent = `From ${formatTime(t)}: now click the end of the range`;
    } else {
      this.chosen(Math.min(this.anchor, t), Math.max(this.anchor, t));
    }
  }

  chosen(start, stop) {
    this.setSelection(start, stop);
    this.setSelecting(false);
    this.onSelect(start, stop);
  }

  wheel(e) {
    e.preventDefault();
    const scale = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 400 : 1;
    const dx = e.deltaX * scale;
    const dy = e.deltaY * scale;
    if (Math.abs(dx) > Math.abs(dy) || e.shiftKey) {
      const pixels = this.track.clientWidth || 1;
      this.panBy((e.shiftKey && !dx ? dy : dx) / pixels);
    } else {
      this.zoomBy(Math.exp(Math.max(-200, Math.min(200, dy)) * 0.002), this.timeAt(e.clientX));
    }
    this.hover(e.clientX);
  }

  key(e) {
    const actions = {
      ArrowLeft: () => this.panBy(-0.1),
      ArrowRight: () => this.panBy(0.1),
      "+": () => this.zoomBy(0.5),
      "=": () => this.zoomBy(0.5),
      "-": () => this.zoomBy(2),
      Escape: () => this.setSelecting(false),
    };
    const action = actions[e.key];
    if (action) {
      e.preventDefault();
      action();
    }
  }

  // -- the picture under the pointer -------------------------------------------

  hover(clientX) {
    const t = this.timeAt(clientX);
    const box = this.track.getBoundingClientRect();
    const x = clientX - box.left;
    this.hoverLine.hidden = false;
    this.hoverLine.style.left = `${x}px`;
    this.preview.show(x, box.width, t, this.spanAt(t), this.width / (box.width || 1));
  }

  hideHover() {
    if (this.drag) return;
    this.hoverLine.hidden = true;
    this.preview.hide();
  }
}
