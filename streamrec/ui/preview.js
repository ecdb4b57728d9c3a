// The picture under a timeline's pointer: the time there, and the recorded
// frame at that instant, asked for at most every PREVIEW_INTERVAL ms (only the
// latest position counts) and rounded to what a pixel can tell apart.

"use strict";

import {formatTime, picture} from "./api.js";

const PREVIEW_INTERVAL = 120;
const WIDTH = 240;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Preview {
  /** ``snapshotUrl(t, width)`` is the picture at ``t``. */
  constructor(snapshotUrl) {
    this.snapshotUrl = snapshotUrl;
    this.wanted = null;
    this.shown = null;
    this.busy = false;
    this.url = null;
    this.box = document.createElement("div");
    this.box.className = "tl-preview";
    this.box.setAttribute("aria-hidden", "true");
    this.box.hidden = true;
    this.image = document.createElement("img");
    this.image.alt = "";
    this.image.width = WIDTH;
    this.image.height = 135;
    this.time = document.createElement("span");
    this.time.className = "tl-preview-time";
    this.box.append(this.image, this.time);
  }

  /**
   * Show the time ``t`` at ``x`` pixels into a track ``trackWidth`` wide, and
   * the picture there when ``span`` (the recorded span holding ``t``) says
   * there is one; ``perPixel`` is the seconds a pixel covers.
   */
  show(x, trackWidth, t, span, perPixel) {
    this.box.hidden = false;
    this.box.classList.toggle("tl-preview-empty", !span);
    const boxWidth = this.box.offsetWidth || WIDTH;
    this.box.style.left = `${Math.max(0, Math.min(trackWidth - boxWidth, x - boxWidth / 2))}px`;
    this.time.textContent = span ? formatTime(t) : `${formatTime(t)} · nothing recorded`;
    if (!span) {
      this.wanted = null;
      return;
    }
    // Rounded so that nearby positions share a picture (and the browser's cache),
    // and kept inside the span: a rounded instant in the gap would have none.
    const quantum = Math.max(0.5, perPixel * 2);
    const rounded = Math.round(t / quantum) * quantum;
    this.wanted = Math.max(span.start + 0.01, Math.min(span.stop - 0.04, rounded));
    if (!this.busy) this.fetch();
  }

  hide() {
    this.box.hidden = true;
    this.wanted = null;
  }

  async fetch() {
    this.busy = true;
    try {
      while (this.wanted !== null && this.wanted !== this.shown) {
        const t = this.wanted;
        const started = performance.now();
        const url = await picture(this.snapshotUrl(t, WIDTH));
        if (url) {
          if (this.url) URL.revokeObjectURL(this.url);
          this.url = url;
          this.image.src = url;
        }
        this.shown = t;
        const spent = performance.now() - started;
        if (spent < PREVIEW_INTERVAL) await sleep(PREVIEW_INTERVAL - spent);
      }
    } finally {
      this.busy = false;
    }
  }
}
